# Runtime shared by every vistok config.
default_scope = 'vistok'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    # log_metric_by_epoch=False: validation metrics are logged at their
    # iteration (mmengine's default logs the epoch, 0 in iteration-based
    # runs), so scalars.json holds curves over iterations
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # vistok's CheckpointHook: atomic writes, never deletes the last good one
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1000,
                    max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # backend=None: NCCL with GPUs, gloo without (vistok.utils.dist)
    dist_cfg=dict(backend=None),
)

log_processor = dict(by_epoch=False, window_size=50)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
# deterministic=None: PyTorch's deterministic algorithms on CPU-only runs
# (bit-identical reruns; README, "Reproducibility"), off with CUDA
randomness = dict(seed=0, deterministic=None)
