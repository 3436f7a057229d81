import os.path as osp

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook as MMEngineCheckpointHook

from vistok.registry import HOOKS
from vistok.utils.checkpoint import write_text_atomic


@HOOKS.register_module()
class CheckpointHook(MMEngineCheckpointHook):
    """mmengine's ``CheckpointHook`` that never loses the last good
    checkpoint.

    mmengine 0.10.7 deletes the oldest checkpoint (``max_keep_ckpts``)
    *before* writing the new one, so a crash while saving can leave no
    usable checkpoint. Here the new checkpoint is written first (atomically,
    by :class:`vistok.engine.runner.VistokRunner`), then ``last_checkpoint``
    is replaced atomically, and only then are outdated checkpoints removed.

    Registered under the same name in vistok's ``HOOKS``: with
    ``default_scope='vistok'``, ``dict(type='CheckpointHook', ...)`` builds
    this hook. Arguments are mmengine's. A sharded (FSDP) run's checkpoints
    are directories (``iter_N.dcp``, see
    :meth:`vistok.engine.runner.VistokRunner.checkpoint_filename`).
    """

    def _filename(self, runner, step) -> str:
        """The checkpoint name of ``step``: ``iter_N.pth``, or the name the
        runner gives it (``iter_N.dcp`` for a sharded model)."""
        name = self.filename_tmpl.format(step)
        rename = getattr(runner, 'checkpoint_filename', None)
        return rename(name) if rename is not None else name

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated = []
        if self.max_keep_ckpts > 0 and not (
                self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            # keep_ckpt_ids is a deque with maxlen=max_keep_ckpts
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))

        ckpt_filename = self._filename(runner, step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        write_text_atomic(self.last_ckpt,
                          osp.join(runner.work_dir, 'last_checkpoint'))
        for old_step in outdated:
            path = self.file_backend.join_path(
                self.out_dir, self._filename(runner, old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)
