"""Writes ``tokenizers_v0.pth``: tiny tokenizers trained for two steps by
the code of the day (model and optimizer state, as the Runner saves them),
plus what a third step and inference give, so later code can prove that
old checkpoints load and resume bit-identically
(tests/test_models/test_tokenizers/test_checkpoint_parity.py).

Run from the repository root of the commit whose checkpoints are pinned:
``python tests/data/checkpoints/make_tokenizer_fixtures.py OUT``. The
committed file was written at commit 46e63f5 (before the tokenizer base
and TiTok moved into the core).
"""
import copy
import hashlib
import importlib
import sys

import torch

SEED = 0
IMAGE = 16
CONV = dict(ch=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
            resolution=IMAGE, z_channels=4, num_groups=2)
#: the pixel decoder maps TiTok's 4 x 4 decoder grid to 16 px (f4)
CONV_F4 = dict(CONV, ch_mult=(1, 1, 2))
VIT = dict(size=None, width=16, depth=1, num_heads=2, num_latent_tokens=4,
           img_size=IMAGE, patch_size=4)
#: model configs, shared with the parity test (plain dicts: no registry
#: scope needed)
CONFIGS = dict(
    vqgan=dict(
        type='AutoencoderTokenizer',
        encoder=dict(type='ConvEncoder', in_channels=3, **CONV),
        quantizer=dict(type='VectorQuantizer', codebook_size=16,
                       embed_dim=4),
        decoder=dict(type='ConvDecoder', out_ch=3, **CONV),
        perceptual_loss=None,
        discriminator=dict(type='PatchGANDiscriminator', base_channels=4,
                           num_layers=1, norm='group', num_groups=2),
        adversarial_loss=dict(type='AdversarialLoss', start_iter=0,
                              lecam_weight=0.001),
        ema=dict(decay=0.9)),
    titok_stage2=dict(
        type='TiTokTokenizer',
        encoder=dict(type='LatentTokenEncoder', out_channels=6, **VIT),
        quantizer=dict(type='ResidualQuantizer', depth=2,
                       depth_scales='pow2',
                       quantizer=dict(type='LookupFreeQuantizer',
                                      codebook_bits=6)),
        decoder=dict(type='LatentTokenDecoder', in_channels=6, **VIT),
        head='proxy', num_proxy_codes=16, is_legacy=True,
        pixel_range=(0.0, 1.0),
        pixel_decoder=dict(
            type='AutoencoderTokenizer',
            encoder=dict(type='ConvEncoder', in_channels=3, **CONV_F4),
            quantizer=dict(type='VectorQuantizer', codebook_size=16,
                           embed_dim=4, use_l2_norm=True),
            decoder=dict(type='ConvDecoder', out_ch=3, **CONV_F4)),
        frozen_parts=('encoder', 'quantizer'),
        ema=dict(decay=0.9)),
)


def digests(state: dict) -> dict:
    """sha256 of each tensor's bytes (bit-exact, a fraction of the size)."""
    return {key: hashlib.sha256(value.detach().contiguous().numpy().tobytes()
                                ).hexdigest()
            for key, value in state.items()}


def images(seed: int, n: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(inputs=[torch.randint(0, 256, (3, IMAGE, IMAGE), generator=g,
                                      dtype=torch.uint8) for _ in range(n)])


def build(name: str):
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    torch.manual_seed(SEED)
    return MODELS.build(CONFIGS[name])


def optimizers(model):
    from vistok.engine.optimizers import MultiPartOptimWrapperConstructor
    cfg = dict(generator=dict(optimizer=dict(type='Adam', lr=1e-3)))
    if model.discriminator is not None:
        cfg['discriminator'] = dict(optimizer=dict(type='Adam', lr=1e-3))
    return MultiPartOptimWrapperConstructor(cfg)(model)


def step(model, wrappers, iteration: int):
    from mmengine.logging import MessageHub
    MessageHub.get_current_instance().update_info('iter', iteration)
    model.train()
    return model.train_step(images(iteration), wrappers)


def main(out: str) -> None:
    try:  # TiTok moved from projects/MARVEL into the core
        importlib.import_module('vistok.models.tokenizers.titok')
    except ImportError:
        importlib.import_module('projects.MARVEL.marvel.titok')
    fixtures = {}
    for name in CONFIGS:
        model = build(name)
        wrappers = optimizers(model)
        for iteration in range(2):
            step(model, wrappers, iteration)
        # copies: the live tensors change in the third step
        saved = copy.deepcopy(dict(state_dict=model.state_dict(),
                                   optimizer=wrappers.state_dict()))
        model.eval()
        probe = images(100)['inputs']
        with torch.no_grad():
            x = model.data_preprocessor(dict(inputs=probe))['inputs']
            tokens = model.encode(x)
            decoded = model.decode(tokens)
            predicted = model(x, mode='predict')
        step(model, wrappers, 2)
        fixtures[name] = dict(
            checkpoint=saved, tokens=tokens, decoded=decoded,
            pred_img=torch.stack([s.pred_img for s in predicted]),
            after_third_step=digests(model.state_dict()))
    torch.save(fixtures, out)


if __name__ == '__main__':
    main(sys.argv[1])
