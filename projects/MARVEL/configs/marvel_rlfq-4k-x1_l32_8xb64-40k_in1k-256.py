# MARVEL-L-32 stage 1: TiTok-L-32 with MARVEL's residual lookup-free
# quantizer (`marvel_quantizer` in _base_/marvel_quantizer.py, depth 1)
# instead of the 4096 x 12 VQ; 32 x depth token ids per image, trained
# against the MaskGIT-VQGAN proxy codes as TiTok's stage 1.
#
# Starting point, as MARVEL's (PadrickLeee/MDQ at 7816c37: experiment.
# init_weight of configs/training/TiTok/stage1/finetune_titok_l32.yaml is the
# released tokenizer_titok_l32.bin, loaded by create_model_and_loss_module of
# utils/train_utils.py without its 'quantize.' and 'pixel_' keys): the
# released TiTok-L-32 (after TiTok's stage 2) converted for a stage-1 model,
#   python tools/model_converters/titok.py tokenizer_titok_l32.bin \
#       checkpoints/tokenizer_titok_l32_imagenet_stage1_vistok.pth --stage 1
# (the converter drops the release's pixel_quantize.* / pixel_decoder.*);
# loading it here drops the VQ codebook (quantize.embedding.weight, vistok's
# quantizer.codebook and its EMA copy). Any other unexpected or missing key
# stops the run. vistok's own TiTok stage-1 run is the alternative:
#   --cfg-options model.pretrained.titok.checkpoint=\
#       work_dirs/titok_vq-4k_l32_8xb32-1m_in1k-256/iter_1000000.pth
# MARVEL trained with 8 x 64 images on TiTok's schedule (1M-iteration cosine)
# and took the step-40,000 checkpoint to stage 2.
_base_ = [
    '../../../configs/titok/titok_vq-4k_l32_8xb32-1m_in1k-256.py',
    './_base_/marvel_quantizer.py'
]
depth = 1
titok_checkpoint = \
    'checkpoints/tokenizer_titok_l32_imagenet_stage1_vistok.pth'
#: the keys of the TiTok checkpoint MARVEL does not use: the VQ codebook
titok_dropped_keys = [r'(ema\.)?quantizer\..*']
model = dict(
    quantizer={{_base_.marvel_quantizer}},
    pretrained=dict(titok=dict(checkpoint=titok_checkpoint,
                               allow_unexpected=titok_dropped_keys)))
batch_per_gpu = 64
train_dataloader = dict(batch_size=batch_per_gpu)
train_cfg = dict(max_iters=40000)
