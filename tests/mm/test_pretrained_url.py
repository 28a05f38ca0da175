"""Official weights by URL: download once into the torch hub cache, verify SHA-256, load.

Everything runs against a real HTTP server on 127.0.0.1 that serves a fixture checkpoint
(an S0 state dict in the official layout, with its own digest), through the init_cfg of
the shipped configs, with ``TORCH_HOME`` redirected to a temporary directory. The
package's table of official URLs is pointed at the local server for the fixture, so the
configs' own form ``init_cfg=dict(type='Pretrained', checkpoint=URL)`` (no digest in the
config) is what is exercised.
"""
import copy
import hashlib
import http.server
import os
import pathlib
import socket
import threading
from functools import partial

import pytest

pytest.importorskip("mmdet")
import torch  # noqa: E402

import revbifpn_mm  # noqa: E402,F401
from revbifpn_mm.models import pretrained  # noqa: E402
from revbifpn_mm.models.pretrained import (CheckpointDownloadError, ChecksumMismatchError,  # noqa: E402
                                           OfficialWeights)

pytestmark = pytest.mark.mm

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAME = "revbifpn_s0.pth.tar"
OFFICIAL_S0_URL = pretrained.OFFICIAL_WEIGHTS["s0"].url  # before any test points it at the local server


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def fixture_ckpt(tmp_path_factory):
    """An S0 classifier state dict saved like the official files, and its SHA-256."""
    from revbifpn_mm.models import RevBiFPN
    torch.manual_seed(7)
    sd = RevBiFPN("s0", num_classes=1000).state_dict()
    with torch.no_grad():  # distinguishable from any fresh initialisation
        for v in sd.values():
            if v.is_floating_point():
                v.add_(torch.randn_like(v) * 0.01)
    root = tmp_path_factory.mktemp("www")
    (root / "revbifpn").mkdir()
    path = root / "revbifpn" / NAME
    torch.save(sd, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return root, sd, digest


@pytest.fixture
def server(fixture_ckpt):
    root = fixture_ckpt[0]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    httpd.hits = {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case someone called torch.hub.set_dir
    assert torch.hub.get_dir() == str(home / "hub")
    return home


@pytest.fixture
def local_official(server, fixture_ckpt, monkeypatch):
    """The official S0 entry, pointed at the local server (with the fixture's digest)."""
    url = f"http://127.0.0.1:{server.server_address[1]}/revbifpn/{NAME}"
    official = pretrained.OFFICIAL_WEIGHTS["s0"]
    assert official.url.endswith("/revbifpn/" + NAME)
    monkeypatch.setitem(pretrained.OFFICIAL_WEIGHTS, "s0", official._replace(url=url, sha256=fixture_ckpt[2]))
    return url


def _config_model(url):
    """The model config of configs/faster_rcnn_revbifpn_s0.py with the URL's host swapped."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(ROOT / "configs" / "faster_rcnn_revbifpn_s0.py"))
    assert dict(cfg.model.backbone.init_cfg) == dict(type="Pretrained", checkpoint=OFFICIAL_S0_URL)
    model = copy.deepcopy(cfg.model)
    model.backbone.init_cfg.checkpoint = url
    return model


def _assert_loaded(backbone, sd):
    own = backbone.state_dict()
    assert all(torch.equal(own[k], sd[k]) for k in own), "backbone weights differ from the served checkpoint"


def _cache_file(torch_home):
    return torch_home / "hub" / "checkpoints" / NAME


def test_config_checkpoints_are_the_official_urls():
    from mmengine.config import Config
    for det in ("faster_rcnn", "mask_rcnn"):
        for arch, entry in pretrained.OFFICIAL_WEIGHTS.items():
            cfg = Config.fromfile(str(ROOT / "configs" / f"{det}_revbifpn_{arch}.py"))
            assert dict(cfg.model.backbone.init_cfg) == dict(type="Pretrained", checkpoint=entry.url)


def test_first_run_downloads_second_uses_cache(torch_home, local_official, server, fixture_ckpt, mm_build):
    _, sd, digest = fixture_ckpt
    path = f"/revbifpn/{NAME}"
    # the detector of the shipped config, as tools/train.py builds and initialises it
    model = mm_build(_config_model(local_official))
    model.init_weights()
    assert server.hits == {path: 1}
    _assert_loaded(model.backbone, sd)
    cached = _cache_file(torch_home)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest
    assert [p.name for p in cached.parent.iterdir()] == [NAME]  # no temporary file left behind

    backbone = mm_build(_config_model(local_official).backbone)
    backbone.init_weights()
    assert server.hits == {path: 1}, "the cached file was not reused"
    _assert_loaded(backbone, sd)


def test_corrupted_cache_is_refused(torch_home, local_official, server, fixture_ckpt, mm_build):
    _, _, digest = fixture_ckpt
    cfg = _config_model(local_official).backbone
    mm_build(cfg).init_weights()
    cached = _cache_file(torch_home)
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor: torch.load alone would not notice
    cached.write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ChecksumMismatchError) as err:
        mm_build(cfg).init_weights()
    msg = str(err.value)
    assert digest in msg and bad in msg and str(cached) in msg and "Delete it" in msg
    assert server.hits == {f"/revbifpn/{NAME}": 1}  # refused, not silently downloaded again
    assert cached.read_bytes() == bytes(data)  # and left for the user to inspect


def test_server_sending_another_file_is_refused(torch_home, local_official, server, monkeypatch, mm_build):
    wrong = "0" * 64
    monkeypatch.setitem(pretrained.OFFICIAL_WEIGHTS, "s0",
                        pretrained.OFFICIAL_WEIGHTS["s0"]._replace(sha256=wrong))
    with pytest.raises(ChecksumMismatchError) as err:
        mm_build(_config_model(local_official).backbone).init_weights()
    msg = str(err.value)
    assert wrong in msg and local_official in msg and "not saved" in msg
    cache_dir = _cache_file(torch_home).parent
    assert not any(cache_dir.iterdir()), "a file with the wrong digest entered the cache"


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["unreachable", "404"])
def test_offline_error_names_url_and_cache_path(torch_home, server, where, monkeypatch, mm_build):
    if where == "unreachable":
        url = f"http://127.0.0.1:{_closed_port()}/revbifpn/{NAME}"
    else:
        url = f"http://127.0.0.1:{server.server_address[1]}/revbifpn/revbifpn_s9.pth.tar"
    monkeypatch.setitem(pretrained.OFFICIAL_WEIGHTS, "s0",
                        pretrained.OFFICIAL_WEIGHTS["s0"]._replace(url=url))
    with pytest.raises(CheckpointDownloadError) as err:
        mm_build(_config_model(url).backbone).init_weights()
    msg = str(err.value)
    target = torch_home / "hub" / "checkpoints" / os.path.basename(url)
    assert url in msg and str(target) in msg and "model.backbone.init_cfg.checkpoint=PATH" in msg
    assert not target.exists()


def test_file_placed_by_hand_is_used_offline(torch_home, fixture_ckpt, monkeypatch, mm_build):
    """The offline recipe of the error message: copy the file into the cache, no network."""
    root, sd, digest = fixture_ckpt
    url = f"http://127.0.0.1:{_closed_port()}/revbifpn/{NAME}"
    monkeypatch.setitem(pretrained.OFFICIAL_WEIGHTS, "s0", OfficialWeights(url, digest, 0.0, 0.0))
    target = _cache_file(torch_home)
    target.parent.mkdir(parents=True)
    target.write_bytes((root / "revbifpn" / NAME).read_bytes())
    b = mm_build(_config_model(url).backbone)
    b.init_weights()
    _assert_loaded(b, sd)


def test_sha256_key_verifies_other_urls_and_local_files(torch_home, server, fixture_ckpt, tmp_path, mm_build):
    root, sd, digest = fixture_ckpt
    url = f"http://127.0.0.1:{server.server_address[1]}/revbifpn/{NAME}"  # not in the official table
    assert pretrained.official_sha256(url) is None
    build = mm_build
    b = build(dict(type="RevBiFPN", arch="s0", init_cfg=dict(type="Pretrained", checkpoint=url, sha256=digest)))
    b.init_weights()
    _assert_loaded(b, sd)
    with pytest.raises(ChecksumMismatchError, match="1" * 64):  # the cached file, checked against the key
        build(dict(type="RevBiFPN", arch="s0",
                   init_cfg=dict(type="Pretrained", checkpoint=url, sha256="1" * 64))).init_weights()
    with pytest.raises(ValueError, match="64 hex digits"):
        build(dict(type="RevBiFPN", arch="s0",
                   init_cfg=dict(type="Pretrained", checkpoint=url, sha256="abc"))).init_weights()
    official = pretrained.OFFICIAL_WEIGHTS["s0"]
    with pytest.raises(ValueError, match="contradicts the published digest"):
        pretrained.fetch_checkpoint(official.url, sha256=digest)
    local = root / "revbifpn" / NAME
    b = build(dict(type="RevBiFPN", arch="s0",
                   init_cfg=dict(type="Pretrained", checkpoint=str(local), sha256=digest)))
    b.init_weights()
    _assert_loaded(b, sd)
    with pytest.raises(ChecksumMismatchError, match=str(local)):
        build(dict(type="RevBiFPN", arch="s0",
                   init_cfg=dict(type="Pretrained", checkpoint=str(local), sha256="2" * 64))).init_weights()


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("fails", [False, True])
def test_rank0_downloads_first_and_never_strands_the_others(rank, fails, monkeypatch):
    from revbifpn_mm.mm import backbone as bb
    events = []

    def fake_fetch(url, sha256):
        events.append("fetch")
        if fails:
            raise CheckpointDownloadError("offline")
        return "/cache/file"

    monkeypatch.setattr(bb, "get_dist_info", lambda: (rank, 2))
    monkeypatch.setattr(bb, "barrier", lambda: events.append("barrier"))
    monkeypatch.setattr(bb, "fetch_checkpoint", fake_fetch)
    if fails:
        with pytest.raises(CheckpointDownloadError):
            bb._fetch_rank0_first("https://x/revbifpn_s0.pth.tar", None)
    else:
        assert bb._fetch_rank0_first("https://x/revbifpn_s0.pth.tar", None) == "/cache/file"
    assert events == (["fetch", "barrier"] if rank == 0 else ["barrier", "fetch"])
