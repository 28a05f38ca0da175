"""The official RevBiFPN checkpoints (``revbifpn_s#.pth.tar``): where they are, download and loading.

The released files are raw state dicts keyed exactly as :class:`~revbifpn_mm.models.RevBiFPN`'s parameters, so
no key conversion is needed; wrapped (``{'state_dict': ...}``) and prefixed (``module.``, ``backbone.``) variants
load too. Only :func:`fetch_checkpoint` touches the network (docs/model_zoo.md).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import uuid
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["load_official_checkpoint", "read_state_dict", "extract_state_dict", "resolve_checkpoint",
           "check_local_checkpoint", "LoadResult", "OfficialWeights", "OFFICIAL_WEIGHTS", "official_sha256",
           "sha256_file", "cached_path", "fetch_checkpoint", "ChecksumMismatchError", "CheckpointDownloadError"]


class OfficialWeights(NamedTuple):
    """One released ImageNet checkpoint (figures from the official RevBiFPN README)."""

    url: str
    sha256: str
    top1: float
    """ImageNet top-1 accuracy (%) at the arch's ImageNet resolution (``ARCH_SETTINGS[arch]['resolution']``)."""
    params_m: float
    """Parameters of the ImageNet classifier, in millions."""


_OFFICIAL_URL = "https://cerebras-public.s3.us-west-2.amazonaws.com/revbifpn/revbifpn_{}.pth.tar"

OFFICIAL_WEIGHTS: Dict[str, OfficialWeights] = {
    arch: OfficialWeights(_OFFICIAL_URL.format(arch), sha256, top1, params_m)
    for arch, sha256, top1, params_m in [
        ("s0", "a9ee012a2670003ea18deca1afaed7c1323ffaafc83b0a30874d262bf2403cfa", 72.8, 3.42),
        ("s1", "584b0c3ea677ac5eff6c0f54b4b683973e7533bfde334155cd770aef041673c4", 75.9, 5.11),
        ("s2", "62ff9387b498550d31e248742a002be22cb29e800cd387ec9c93b6da7418dcc8", 79.0, 10.6),
        ("s3", "1695576b09ee9fc584df616abaf0762188122468825cc92b5abfeec63b609d25", 81.1, 19.6),
        ("s4", "61d7b65524000bb147aac26ad559906a2380e55a499d9d420063cc2b9e2ef42a", 83.0, 48.7),
        ("s5", "d7713a25c7f62bf4b9ebaa2693a7b6896e7965c6647cbd1d98eddeae8b74cdc3", 83.7, 82.0),
        ("s6", "31f355d5fb54610ad9051d08d0ec10bb0d33f40c0936352cb863b9f9a3d4fa09", 84.2, 142.3)]}
"""Official ImageNet checkpoints by arch: URL, SHA-256 of the whole file, top-1, parameters."""

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class ChecksumMismatchError(RuntimeError):
    """A checkpoint file's SHA-256 differs from the expected digest."""


class CheckpointDownloadError(RuntimeError):
    """A checkpoint URL could not be downloaded (offline, unreachable, HTTP error)."""


def official_sha256(url: str) -> Optional[str]:
    """The SHA-256 of an official checkpoint URL, or None for any other URL."""
    return next((entry.sha256 for entry in OFFICIAL_WEIGHTS.values() if entry.url == url), None)


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (about 1 GB/s on one core)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_path(url: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> str:
    """Where :func:`fetch_checkpoint` keeps ``url``: ``<cache_dir>/<file name of the URL>``.

    ``cache_dir`` defaults to ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``), where
    mmengine's ``Pretrained`` init caches URLs too.
    """
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise ValueError(f"checkpoint URL {url!r} does not end in a file name")
    root = os.fspath(cache_dir) if cache_dir is not None else os.path.join(torch.hub.get_dir(), "checkpoints")
    return os.path.join(root, name)


def _check_digest(path: str, expected: str, url: str, cache_file: str) -> None:
    """Raise :class:`ChecksumMismatchError` unless ``path`` (cache file or fresh download) hashes to ``expected``."""
    got = sha256_file(path)
    if got == expected:
        return
    if path != cache_file:  # a fresh download: never let it into the cache
        os.remove(path)
        raise ChecksumMismatchError(
            f"the file downloaded from {url} has SHA-256 {got}, expected {expected}; it was not "
            f"saved to {cache_file!r}. The server sent another file than the published one: check "
            "the URL, or the sha256 given with it")
    raise ChecksumMismatchError(
        f"cached checkpoint {cache_file!r} has SHA-256 {got}, expected {expected} (for {url}): the "
        "file is corrupted, incomplete or another file. Delete it and rerun to download it again")


def _expected_sha256(sha256: Optional[str]) -> Optional[str]:
    """A given digest, normalised and checked (None stays None)."""
    if sha256 is None:
        return None
    sha256 = str(sha256).strip().lower()
    if not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 hex digits (the SHA-256 of the whole file), got {sha256!r}")
    return sha256


def check_local_checkpoint(path: Union[str, os.PathLike]) -> None:
    """Raise a ``FileNotFoundError`` naming the fixes unless ``path`` is a file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"RevBiFPN checkpoint not found: {os.fspath(path)!r}. The official ImageNet weights are listed with "
            "URL and SHA-256 in docs/model_zoo.md and revbifpn_mm.models.OFFICIAL_WEIGHTS; give the URL (downloaded "
            "once and verified) or a local copy")


def resolve_checkpoint(checkpoint: Union[str, os.PathLike], sha256: Optional[str] = None,
                       fetch: Optional[Callable[[str, Optional[str]], str]] = None) -> str:
    """The local file of a checkpoint given as a path or an ``http(s)://`` URL, verified.

    URLs go through ``fetch`` (default :func:`fetch_checkpoint`: downloaded once into the cache,
    checked against ``sha256`` or the published digest). A local path must exist; with
    ``sha256`` its digest is checked too.

    Raises:
        FileNotFoundError: A local path that does not exist (the message names the fixes).
        ValueError: Another URL scheme, or a malformed ``sha256``.
        ChecksumMismatchError: The file's digest differs from ``sha256``.
        CheckpointDownloadError: The download failed.
    """
    source = os.fspath(checkpoint)
    if source.startswith(("http://", "https://")):
        return (fetch or fetch_checkpoint)(source, sha256)
    if "://" in source:
        raise ValueError(f"RevBiFPN checkpoints are local paths or http(s) URLs, not {source!r}")
    check_local_checkpoint(source)
    expected = _expected_sha256(sha256)
    if expected is not None:
        got = sha256_file(source)
        if got != expected:
            raise ChecksumMismatchError(f"checkpoint {source!r} has SHA-256 {got}, but sha256 is {expected}: "
                                        "wrong or corrupted file")
    return source


def fetch_checkpoint(url: str, sha256: Optional[str] = None,
                     cache_dir: Optional[Union[str, os.PathLike]] = None, progress: bool = True) -> str:
    """Download ``url`` once into the cache, check its SHA-256, and return the local path.

    The first call downloads into :func:`cached_path` (via a temporary file, renamed once complete and
    verified, so a broken download never looks cached); later calls reuse the cached file. The expected digest
    is ``sha256``, else the one :data:`OFFICIAL_WEIGHTS` lists for ``url``; it is checked after the download and
    on every later use (about 1 s per GB). Without either the file is used unverified.

    Args:
        url: ``http://`` or ``https://`` URL of the checkpoint file.
        sha256: Expected SHA-256 (64 hex digits) of the whole file. Needed to verify
            non-official URLs; for an official URL it must equal the listed digest.
        cache_dir: Directory of the cached files. Defaults to
            ``torch.hub.get_dir()/checkpoints`` (honours ``$TORCH_HOME``).
        progress: Show a download progress bar on stderr. Defaults to True.

    Returns:
        The path of the verified local file.

    Raises:
        ValueError: ``url`` is not an http(s) URL, or ``sha256`` is malformed or
            contradicts the official digest of ``url``.
        CheckpointDownloadError: The download failed (offline, unreachable host, HTTP
            error); the message says where to put a copy of the file by hand.
        ChecksumMismatchError: The downloaded or cached file does not have the expected
            digest; the message names both digests and the file.
    """
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise ValueError(f"fetch_checkpoint needs an http:// or https:// URL, got {url!r}")
    official = official_sha256(url)
    sha256 = _expected_sha256(sha256)
    if sha256 is not None and official is not None and sha256 != official:
        raise ValueError(f"sha256 {sha256} contradicts the published digest {official} of {url}; "
                         "drop the sha256 key to use the published one")
    expected = sha256 or official
    dst = cached_path(url, cache_dir)
    if not os.path.isfile(dst):
        tmp = _download(url, dst, progress)
        if expected:
            _check_digest(tmp, expected, url, dst)
        os.replace(tmp, dst)
    elif expected:
        _check_digest(dst, expected, url, dst)
    return dst


def _download(url: str, dst: str, progress: bool) -> str:
    """Download ``url`` to a temporary file beside ``dst`` (removed on failure) and return its path."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.{uuid.uuid4().hex}.download"
    try:
        torch.hub.download_url_to_file(url, tmp, progress=progress)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise CheckpointDownloadError(
            f"could not download {url} ({type(err).__name__}: {err}). Without internet access, "
            f"fetch the file on another machine and put it at {dst!r} (the cache directory, "
            "$TORCH_HOME/hub/checkpoints); it is then used from there, its SHA-256 checked. Or "
            "use a local copy instead of the URL") from err
    return tmp


class LoadResult(NamedTuple):
    """Keys that were expected but absent, present but unused, and skipped on purpose."""

    missing_keys: List[str]
    unexpected_keys: List[str]
    skipped_keys: List[str]


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """Read a checkpoint file with ``weights_only=True`` and clear errors.

    Raises:
        FileNotFoundError: The file does not exist (the message says where to get one).
        RuntimeError: The file exists but cannot be read (truncated or not a checkpoint).
    """
    path = os.fspath(path)
    check_local_checkpoint(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise RuntimeError(
            f"could not read RevBiFPN checkpoint {path!r} ({type(err).__name__}: {err}); the file "
            "is truncated or not a PyTorch checkpoint: download it again") from err
    return extract_state_dict(obj, source=path)


def extract_state_dict(obj: object, source: str = "checkpoint") -> Dict[str, Tensor]:
    """Unwrap ``{'state_dict': ...}`` / ``{'model': ...}`` and strip common prefixes."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise RuntimeError(f"{source} does not contain a state dict of tensors")
    sd = dict(obj)
    for prefix in ("module.", "backbone.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _keys_for(model: nn.Module, sd: Dict[str, Tensor], prefix: Optional[str], source: str
              ) -> Tuple[Dict[str, Tensor], List[str]]:
    """The keys of ``sd`` under ``prefix`` (stripped), without those of parts ``model`` lacks (returned apart)."""
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f"no key of {source!r} starts with prefix {prefix!r}")
    skip = (("head.",) if getattr(model, "head", None) is None else ()) + \
        (("rev_stack.recomp_op.",) if not getattr(model, "with_neck", True) else ())
    return {k: v for k, v in sd.items() if not k.startswith(skip)}, [k for k in sd if k.startswith(skip)]


def load_official_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Tensor]],
                             strict: bool = True, prefix: Optional[str] = None, sha256: Optional[str] = None,
                             fetch: Optional[Callable[[str, Optional[str]], str]] = None) -> LoadResult:
    """Load an official (or converted) RevBiFPN checkpoint into ``model``: the one loader.

    Keys of parts the model does not have are skipped (``head.*`` for a head-less model,
    ``rev_stack.recomp_op.*`` for a model without neck). With ``strict`` every remaining key
    must match in name and shape; shape mismatches always raise.

    Args:
        model: A :class:`~revbifpn_mm.models.RevBiFPN`.
        checkpoint: A local path or ``http(s)://`` URL (see :func:`resolve_checkpoint`), or a
            state dict.
        strict: Raise on missing/unexpected keys. Defaults to True.
        prefix: Load only the keys under this prefix (e.g. ``'backbone.'`` of a detector).
        sha256: Expected SHA-256 of the file (URLs of the official weights are always checked).
        fetch: How URLs are downloaded (default :func:`fetch_checkpoint`; the mm layer lets
            rank 0 download first).

    Returns:
        The :class:`LoadResult` (empty lists when everything matched).

    Raises:
        ValueError: Shapes or keys do not match (e.g. a checkpoint of another arch), or nothing
            matched at all.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = os.fspath(checkpoint)
        sd = read_state_dict(resolve_checkpoint(source, sha256, fetch))
    else:
        source, sd = "the state dict", extract_state_dict(checkpoint)
    sd, skipped = _keys_for(model, sd, prefix, source)
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    arch = getattr(model, "arch", {}).get("name", "?")
    if mismatched or (strict and (missing or unexpected)):  # a shape mismatch is never silently skipped
        detail = "; ".join(mismatched[:3] + [f"missing {k}" for k in missing[:3]] +
                           [f"unexpected {k}" for k in unexpected[:3]])
        raise ValueError(
            f"checkpoint does not fit RevBiFPN arch {arch!r}: {len(mismatched)} shape mismatches, "
            f"{len(missing)} missing and {len(unexpected)} unexpected keys ({detail}). "
            "Is it a checkpoint of another RevBiFPN size?")
    if len(missing) == len(own):
        raise ValueError(f"{source!r} holds no RevBiFPN weights (no key matched); a whole detector or "
                         "segmentor checkpoint loads with load_from, or its backbone with prefix='backbone.'")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)  # shapes match: checked above
    return LoadResult(missing, unexpected, skipped)
