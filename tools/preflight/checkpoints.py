"""The checkpoints of a run: the backbone's local pretrained one, and the one ``--resume`` loads."""
import glob
import os.path as osp
import re
import zipfile
from typing import Any, Optional, Tuple

from revbifpn_mm.mm.backbone import config_advice
from revbifpn_mm.models.pretrained import check_local_checkpoint

from .datasets import DataError, _is_remote

__all__ = ["check_pretrained", "loadable", "resume_checkpoint"]


def check_pretrained(cfg: Any) -> None:
    """Raise the loader's ``FileNotFoundError`` (with the fix) when the backbone's local checkpoint is missing.

    URLs are not fetched here: the backbone downloads and verifies them when it is initialised.
    """
    model = cfg.get("model", None)
    backbone = model.get("backbone", None) if isinstance(model, dict) else None
    init_cfg = backbone.get("init_cfg", None) if isinstance(backbone, dict) else None
    if not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained":
        return
    ckpt = init_cfg.get("checkpoint")
    if ckpt and not _is_remote(str(ckpt)) and ":" not in str(ckpt).split("/")[0]:
        with config_advice():
            check_local_checkpoint(str(ckpt))


def loadable(path: str) -> bool:
    """Whether ``path`` is a complete checkpoint: a zip archive (``torch.save``'s format) whose
    members all pass their CRC check. A save cut short leaves a file without its central directory."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def _newest_loadable(folder: str) -> Optional[str]:
    """The newest complete ``*.pth`` of ``folder`` (highest number in the name, then latest written), or None."""
    def key(path: str) -> Tuple[int, float]:
        m = re.search(r"(\d+)\.pth$", path)
        return (int(m.group(1)) if m else -1, osp.getmtime(path))
    return next((p for p in sorted(glob.glob(osp.join(folder, "*.pth")), key=key, reverse=True) if loadable(p)), None)


def _requested(path: str) -> str:
    """``path`` if it is a complete checkpoint; else a :class:`DataError` that names the one to take instead."""
    if not osp.isfile(path):
        raise DataError(f"--resume checkpoint not found: {path!r}")
    if loadable(path):
        return path
    alt = _newest_loadable(osp.dirname(path) or ".")
    raise DataError(f"--resume checkpoint {path!r} is incomplete or corrupt (a save cut short?): "
                    + (f"resume from {alt!r} instead (--resume {alt})" if alt else
                       "no complete checkpoint beside it; start again without --resume"))


def resume_checkpoint(work_dir: str, requested: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """What ``--resume`` loads: ``(path, warning)``; ``(None, None)`` where there is nothing to resume.

    ``requested`` None (``--resume`` without a path) means the one ``work_dir/last_checkpoint``
    names. If that one is incomplete or corrupt (a save cut short), the newest complete checkpoint
    of ``work_dir`` is taken instead, with a warning; an explicitly requested one is never replaced.

    Raises:
        DataError: The checkpoint to resume from is incomplete or corrupt and no other one is (the
            message names the file and what to do), or an explicit path does not exist.
    """
    if requested is not None:
        return _requested(requested), None
    marker = osp.join(work_dir, "last_checkpoint")
    latest = open(marker).read().strip() if osp.isfile(marker) else None
    if latest and osp.isfile(latest) and loadable(latest):
        return latest, None
    good = _newest_loadable(work_dir)
    if latest is None and good is None:
        return None, None  # a fresh run: mmengine starts from scratch
    state = "missing" if not osp.isfile(latest or "") else "incomplete or corrupt"
    if good is None:
        raise DataError(f"cannot resume: the latest checkpoint {latest!r} ({marker}) is "
                        f"{state if state == 'missing' else state + ' (a save cut short?)'} "
                        f"and {work_dir!r} holds no complete one; start again without --resume")
    return good, (f"the latest checkpoint {latest!r} is {state} (a save cut short?): resuming from {good!r}, "
                  "the newest complete one")
