"""MARVEL's two-stage recipe through its tiny CPU configs on the embedded
scikit-image photos, with a random teacher of the demo's architecture:
stage 1 learns the proxy codes, stage 2 starts from stage 1's checkpoint by
config (encoder and quantizer frozen, pixel parts from the teacher file) and
learns pixels; the single-stage config learns pixels directly."""
import os.path as osp

import numpy as np
import torch
from mmengine.registry import DefaultScope

from _helpers import REPO_ROOT, load_train_config
from _helpers import train_config as train

CONFIGS = osp.join(REPO_ROOT, 'projects/MARVEL/configs')
STAGE1 = 'marvel_rlfq-4k-x2_vit-tiny-k8_1xb8-300_skimage-64.py'
STAGE2 = 'marvel_rlfq-4k-x2_vit-tiny-k8-stage2_1xb8-300_skimage-64.py'
SINGLE = 'marvel_rlfq-4k-x2_vit-tiny-k8-pixel_1xb8-300_skimage-64.py'
GENERATOR = 'maskgit_rlfq-4k-x2_bert-tiny_1xb16-1k_skimage-tokens.py'


def load_cfg(name, work_dir, iters, options):
    return load_train_config(osp.join(CONFIGS, name), work_dir, iters,
                             options)


def falls(values, ratio):
    """The mean of the last 5 logged values is below ``ratio`` times the
    mean of the first 5."""
    return values[-5:].mean() < ratio * values[:5].mean()


def val_images(runner):
    batch = next(iter(runner.val_dataloader))
    model = runner.model
    return model.data_preprocessor(batch)['inputs']


def test_two_stage_recipe_by_config(tmp_path):
    from vistok.registry import MODELS
    # the photos as the evaluation sees them (no random crops), a constant
    # learning rate: a short run that has to fit the teacher's codes
    cfg1 = load_cfg(STAGE1, tmp_path / 'stage1', 80, {
        'optim_wrapper.optimizer.lr': 3e-3,
        'param_scheduler': [dict(type='ConstantLR', factor=1.0,
                                 by_epoch=False)],
        'train_dataloader.dataset.pipeline': [
            dict(type='Resize', scale=(64, 64), keep_ratio=False),
            dict(type='PackInputs')],
    })
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('vistok'):
        teacher = MODELS.build(cfg1.model.teacher)
    teacher_path = str(tmp_path / 'teacher.pth')
    torch.save({'state_dict': teacher.state_dict()}, teacher_path)
    cfg1.model.teacher_path = teacher_path

    # stage 1: the proxy codes are predicted better than by the best
    # image-independent guess: the cross-entropy is below the entropy of
    # the teacher's code histogram (measured 2.53 vs 3.02 nats), the
    # accuracy above the share of its commonest code (0.26 vs 0.18)
    runner, history = train(cfg1)
    assert falls(history['loss_proxy_ce'], 0.7)
    model = runner.model.eval()
    images = val_images(runner)
    with torch.no_grad():
        codes = model.teacher.encode(images)
        logits = model.head_output(model.encode(images))
    ce = torch.nn.functional.cross_entropy(logits, codes).item()
    share = codes.flatten().bincount().float() / codes.numel()
    entropy = -(share[share > 0] * share[share > 0].log()).sum().item()
    accuracy = (logits.argmax(1) == codes).float().mean().item()
    assert ce < entropy - 0.3, (ce, entropy)
    assert accuracy > share.max().item() + 0.04, (accuracy, share.max())
    # depth-wise and pooled usage of the 2 x 4,096 LFQ codes
    metrics = runner.val_loop.run()
    assert {'usage', 'depth0.usage', 'depth1.usage'} <= set(metrics)
    stage1_ckpt = str(tmp_path / 'stage1' / 'iter_80.pth')
    # testing the checkpoint (tools/test.py's runner) and load_tokenizer
    # fill the teacher from its file: checkpoints do not hold it
    from vistok.apis import build_runner, detokenize, load_tokenizer
    test_cfg = load_cfg(STAGE1, tmp_path / 'test', 80, {})
    test_cfg.model.teacher_path = teacher_path
    test_cfg.load_from = stage1_ckpt
    tested = build_runner(test_cfg).test()
    assert tested['psnr'] == metrics['psnr']
    loaded = load_tokenizer(osp.join(CONFIGS, STAGE1), stage1_ckpt,
                            cfg_options={'model.teacher_path': teacher_path})
    assert torch.equal(detokenize(loaded, codes.new_zeros(2, 8, 2)),
                       detokenize(runner.model, codes.new_zeros(2, 8, 2)))
    stage1 = torch.load(stage1_ckpt, map_location='cpu')['state_dict']

    # stage 2 starts from stage 1 by config
    cfg2 = load_cfg(STAGE2, tmp_path / 'stage2', 40, {
        'model.pretrained.stage1.checkpoint': stage1_ckpt,
        'model.pretrained.pixel_parts.checkpoint': teacher_path,
        'model.adversarial_loss.start_iter': 20,
    })
    runner, history = train(cfg2)
    model = runner.model
    state = model.state_dict()
    for key in stage1:  # frozen: still stage 1's weights
        if key.startswith(('encoder.', 'quantizer.')):
            assert torch.equal(state[key], stage1[key]), key
    assert not torch.equal(state['decoder.ln_post.weight'],
                           stage1['decoder.ln_post.weight'])
    assert falls(history['loss_mse'], 0.8)
    assert 'loss_disc' in history and 'loss_gan' in history
    # the frozen quantizer behind the frozen encoder adds no loss terms
    assert 'loss_entropy' not in history and 'depth0.usage' in history
    assert not any(p.requires_grad for p in model.encoder.parameters())

    # the pixel parts were initialised from the teacher file
    cfg2.model.pretrained.stage1.checkpoint = stage1_ckpt
    cfg2.model.pretrained.pixel_parts.checkpoint = teacher_path
    with DefaultScope.overwrite_default_scope('vistok'):
        fresh = MODELS.build(cfg2.model)
    fresh.init_weights()
    fresh_state = fresh.state_dict()
    for key, value in teacher.state_dict().items():
        if key.startswith(('decoder.', 'post_quant_conv.')):
            assert torch.equal(fresh_state['pixel_' + key], value), key
    assert torch.equal(fresh.pixel_codebook.weight,
                       teacher.quantizer.codebook)
    assert torch.equal(fresh_state['encoder.proj_out.weight'],
                       stage1['encoder.proj_out.weight'])


def test_single_stage_then_generation_on_its_tokens(tmp_path):
    """Single stage learns pixels; its 8 x 2 ids per image export to token
    shards that read back and decode exactly as tokenizing directly; the
    tiny MaskGIT config learns them (EMA weights in the checkpoint) and
    tools/sample.py draws images of the right shape, reproducibly."""
    import runpy

    from vistok.apis import detokenize, load_tokenizer, tokenize
    from vistok.datasets import TokenShardDataset
    runner, history = train(load_cfg(SINGLE, tmp_path / 'run', 40, {}))
    assert falls(history['loss_mse'], 0.7)
    images = val_images(runner)
    model = runner.model.eval()
    with torch.no_grad():
        tokens = model.encode(images)
        out = model(images, mode='tensor')
    assert tokens.shape == (images.shape[0], 8, 2)
    assert torch.equal(model.decode(tokens), out.reconstruction)
    # the tokens describe the images: no collapse onto one code sequence
    # (measured 13 distinct sequences of 16 after 40 iterations; 1 with the
    # commitment term the demo drops)
    assert len(tokens.flatten(1).unique(dim=0)) > len(images) // 2

    config = osp.join(CONFIGS, SINGLE)
    checkpoint = str(tmp_path / 'run' / 'iter_40.pth')
    export = runpy.run_path(osp.join(REPO_ROOT, 'tools/export_tokens.py'))
    manifest = export['main']([config, checkpoint, '--data', 'val', '--out',
                               str(tmp_path / 'tokens')])
    assert manifest['levels'][0]['shape'] == [8, 2]
    dataset = TokenShardDataset(str(tmp_path / 'tokens'), verify=True)
    read_back = torch.stack(
        [torch.as_tensor(dataset[i]['indices']) for i in range(len(dataset))])
    tokenizer = load_tokenizer(config, checkpoint)
    # the photos' pixels in one batch, as the export's (batch 32 > 18
    # photos): a sign of a near-zero latent may flip with the batch
    direct = tokenize(tokenizer, [
        image for batch in runner.val_dataloader for image in batch['inputs']
    ])
    assert torch.equal(read_back.long(), direct.long())
    assert torch.equal(detokenize(tokenizer, read_back),
                       detokenize(tokenizer, direct))

    tokens = str(tmp_path / 'tokens')
    gen_cfg = load_cfg(GENERATOR, tmp_path / 'gen', 60, {
        'train_dataloader.dataset.data_root': tokens})
    _, history = train(gen_cfg)
    assert falls(history['loss_ce'], 0.8)
    gen_ckpt = str(tmp_path / 'gen' / 'iter_60.pth')
    assert 'ema_state_dict' in torch.load(gen_ckpt, weights_only=False)
    sample = runpy.run_path(osp.join(REPO_ROOT, 'tools/sample.py'))['main']
    outs = []
    for name in ('a', 'b'):
        out = str(tmp_path / f'{name}.npz')
        sample([osp.join(CONFIGS, GENERATOR), gen_ckpt, '--out', out,
                '--num-images', '4', '--tokenizer-checkpoint', checkpoint])
        with np.load(out) as npz:
            outs.append((npz['arr_0'], npz['arr_1']))
    assert outs[0][0].shape == (4, 64, 64, 3)
    assert outs[0][0].dtype == np.uint8
    assert outs[0][1].tolist() == [0, 1, 2, 3]
    assert np.array_equal(outs[0][0], outs[1][0])


def test_stage2_dist_train_two_processes_match_one(tmp_path):
    """tools/dist_train.sh on the stage-2 config (frozen encoder and
    quantizer, pixel parts, discriminator): 2 processes x batch 4 give the
    weights of 1 process x batch 8 — only the trained parts' gradients are
    averaged, and every rank loads the same pretrained files."""
    import subprocess
    import sys

    from mmengine.runner.checkpoint import _load_checkpoint

    from _helpers import free_port, subprocess_env
    from vistok.registry import MODELS
    cfg = load_cfg(STAGE1, tmp_path, 1, {})
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('vistok'):
        teacher = MODELS.build(cfg.model.teacher)
        cfg.model.teacher = None  # a stage-1 model without its teacher
        stage1 = MODELS.build(cfg.model)
    files = {'teacher': teacher, 'stage1': stage1}
    for name, model in files.items():
        torch.save({'state_dict': model.state_dict()},
                   str(tmp_path / f'{name}.pth'))
    options = {
        'model.pretrained.stage1.checkpoint': str(tmp_path / 'stage1.pth'),
        'model.pretrained.pixel_parts.checkpoint':
        str(tmp_path / 'teacher.pth'),
        # BatchNorm statistics and LeCam's per-rank EMA are not rank-invariant
        'model.discriminator.norm': 'group',
        'model.adversarial_loss.lecam_weight': 0.0,
        'model.adversarial_loss.start_iter': 0,
        # Adam's eps 1e-8 turns the float-summation noise of the
        # discriminator's near-zero gradient entries into sign flips of
        # whole lr-sized updates (2e-4 after 3 steps); a larger eps keeps
        # those updates proportional to the gradient, so only the averaging
        # is compared
        'optim_wrapper.discriminator.optimizer.eps': 1e-3,
        'train_cfg.max_iters': 3, 'train_cfg.val_interval': 100,
        'default_hooks.checkpoint.interval': 3,
    }
    single, _ = train(load_cfg(STAGE2, tmp_path / 'one', 3, dict(
        options, **{'train_dataloader.batch_size': 8})))
    proc = subprocess.run(
        ['bash', osp.join(REPO_ROOT, 'tools/dist_train.sh'),
         osp.join(CONFIGS, STAGE2), '2', '--work-dir', str(tmp_path / 'two'),
         '--cfg-options', *[f'{k}={v}' for k, v in options.items()],
         'train_dataloader.batch_size=4'],
        env=subprocess_env(PYTHON=sys.executable, PORT=free_port()),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = _load_checkpoint(str(tmp_path / 'two' / 'iter_3.pth'),
                           map_location='cpu')['state_dict']
    one = single.model.state_dict()
    assert set(two) == set(one)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5,
                                   msg=key)
    start = stage1.state_dict()
    assert not torch.equal(one['decoder.ln_post.weight'],
                           start['decoder.ln_post.weight'])
    assert torch.equal(one['encoder.proj_out.weight'],
                       start['encoder.proj_out.weight'])
