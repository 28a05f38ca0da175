"""``SafeCheckpointHook``: mmengine's ``CheckpointHook`` whose saves cannot destroy the last good state.

mmengine 0.10's hook deletes the oldest checkpoint before it writes the new one in place. This one writes
to a temporary name, renames it into place (``os.replace``), rewrites ``last_checkpoint`` the same way, and
only then removes those beyond ``max_keep_ckpts`` (docs/design.md, *Faults*). Remote ``out_dir`` backends
keep mmengine's behaviour.

Use it as the ``checkpoint`` hook (this package's configs do)::

    default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=3))
"""
from __future__ import annotations

import glob
import os
import os.path as osp
from collections import deque
from typing import Any

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

__all__ = ["SafeCheckpointHook"]


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` with crash-safe saves (module docstring); the same arguments."""

    def before_train(self, runner: Any) -> None:
        """As mmengine's, then remove the temporaries of saves that a killed run left behind."""
        super().before_train(runner)
        if is_main_process() and osp.isdir(str(self.out_dir)):
            for path in glob.glob(osp.join(self.out_dir, "*.tmp-*")):
                os.remove(path)

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict) -> None:
        if not osp.isdir(str(self.out_dir)):  # a remote backend: no rename there
            return super()._save_checkpoint_with_step(runner, step, meta)
        name = self.filename_tmpl.format(step)
        final = osp.join(self.out_dir, name)
        tmp = f"{name}.tmp-{os.getpid()}"
        stale = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            ids = list(self.keep_ckpt_ids) + [step]  # recorded in the checkpoint itself, as mmengine's hook does
            stale, ids = ids[:-self.max_keep_ckpts], ids[-self.max_keep_ckpts:]
            self.keep_ckpt_ids = deque(ids, self.max_keep_ckpts)
            runner.message_hub.update_info("keep_ckpt_ids", ids)
        self.last_ckpt = final
        runner.message_hub.update_info("last_ckpt", final)
        runner.save_checkpoint(self.out_dir, tmp, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        os.replace(osp.join(self.out_dir, tmp), final)  # the new checkpoint is complete: now it counts
        _write_atomically(osp.join(runner.work_dir, "last_checkpoint"), final)
        for old in stale:  # only now: the last good state is never the one removed
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path) and path != final:
                os.remove(path)
