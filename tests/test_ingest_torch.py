"""PyTorch and safetensors readers: a module, its state_dict file and its safetensors file give the same
filters; traced depths are checked against values worked out by hand; unsafe and broken files are refused."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch
from torch import nn

from filtershift.errors import InputError
from filtershift.ingest.torch import read_module, read_safetensors, read_state_dict

torch.manual_seed(0)


def rows(w) -> np.ndarray:
    """Filters of an (out, in/groups, kh, kw) weight, independently: filter o*(in/groups)+i is w[o, i]."""
    w = w.detach().float().numpy() if isinstance(w, torch.Tensor) else w
    return np.array([w[o, i].ravel() for o in range(w.shape[0]) for i in range(w.shape[1])], np.float32)


def sha(arrays) -> str:
    return hashlib.sha256(np.concatenate(arrays).astype("<f4").tobytes()).hexdigest()


def chain() -> nn.Sequential:
    """A plain chain with 12 entries, so 'features.10' must come after 'features.2' (natural name order)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),                 # 0
        nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.ReLU(),       # 2
        nn.Conv2d(8, 16, 1), nn.ReLU(),                           # 4 (1x1)
        nn.Conv2d(16, 4, 3, padding=1), nn.ReLU(),                # 6
        nn.Conv2d(4, 4, 5, padding=2), nn.ReLU(),                 # 8 (5x5)
        nn.Conv2d(4, 2, 3, padding=1), nn.ReLU(),                 # 10
    )


CHAIN_3X3 = [0, 2, 6, 10]
#: every conv of the chain sits on its own depth: ranks over convs 0, 2, 4, 6, 8, 10
CHAIN_RANK = {0: 0, 2: 1, 6: 3, 10: 5}


class MyConv(nn.Conv2d):
    """A user subclass: torch.fx would trace into it unless the reader keeps Conv2d subclasses as leaves."""


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.dw = MyConv(4, 4, 3, padding=1, groups=4)
        self.head = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.a(x) + self.b(x)
        z = y + self.dw(y)
        return self.head(z)


def test_module_traced_depths_by_hand():
    net = Residual()
    m = read_module(net, name="residual")
    # fx depths: stem 0, relu 1, a 2, b 2, add 3, dw 4, add 5, head 6; conv depths {0, 2, 4, 6}
    assert [(lay.name, lay.conv_depth) for lay in m.layers] == [("stem", 0), ("a", 1), ("dw", 2), ("head", 3)]
    assert [lay.conv_depth_norm for lay in m.layers] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert [(lay.in_channels, lay.out_channels, lay.groups) for lay in m.layers] == [
        (3, 4, 1), (4, 4, 1), (4, 4, 4), (4, 2, 1)]
    expected = [rows(getattr(net, n).weight) for n in ("stem", "a", "dw", "head")]
    np.testing.assert_array_equal(m.filters(), np.concatenate(expected))
    assert m.sha256 == sha(expected)
    assert (m.meta["depth"], m.meta["Conv"]) == (7, 5)
    assert (m.meta["(3, 3) filters"], m.meta["(1, 1) filters"], m.meta["total_filters"]) == (12 + 16 + 4 + 8, 16, 56)
    assert m.meta["3x3_filter_share"] == pytest.approx(40 / 56)
    assert (m.source, m.kind) == ("residual", "torch")


def test_module_state_dict_and_safetensors_give_the_same_filters(tmp_path):
    net = chain()
    expected = [rows(net[i].weight) for i in CHAIN_3X3]
    torch.save(net.state_dict(), tmp_path / "chain.pt")
    save_torch(net.state_dict(), str(tmp_path / "chain.safetensors"))
    results = [read_module(net), read_state_dict(tmp_path / "chain.pt"),
               read_safetensors(tmp_path / "chain.safetensors")]
    for m in results:
        np.testing.assert_array_equal(m.filters(), np.concatenate(expected))
        assert m.sha256 == sha(expected)
        assert [lay.name for lay in m.layers] == [str(i) for i in CHAIN_3X3]
        assert [lay.conv_depth for lay in m.layers] == [CHAIN_RANK[i] for i in CHAIN_3X3]
        assert [lay.out_channels for lay in m.layers] == [8, 8, 4, 2]
        assert m.meta["(5, 5) filters"] == 16 and m.meta["(1, 1) filters"] == 128
    assert [lay.groups for lay in results[0].layers] == [1, 4, 1, 1]
    # a bare file does not know the groups: (8, 2, 3, 3) is read as in_channels 2, groups 1
    assert [(lay.in_channels, lay.groups) for lay in results[1].layers][1] == (2, 1)
    assert [r.kind for r in results] == ["torch", "torch", "safetensors"]


def test_files_with_module_get_traced_depths_and_groups(tmp_path):
    net = Residual()
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "dp.pt")
    save_torch(net.state_dict(), str(tmp_path / "r.safetensors"))
    ref = read_module(net)
    for m in (read_state_dict(tmp_path / "dp.pt", module=net),
              read_safetensors(tmp_path / "r.safetensors", module=net)):
        assert m.sha256 == ref.sha256
        assert [(lay.name, lay.conv_depth, lay.groups, lay.in_channels) for lay in m.layers] == [
            (lay.name, lay.conv_depth, lay.groups, lay.in_channels) for lay in ref.layers]


def test_file_with_the_wrong_module_is_refused(tmp_path):
    torch.save(chain().state_dict(), tmp_path / "chain.pt")
    with pytest.raises(InputError, match="does not belong to the module"):
        read_state_dict(tmp_path / "chain.pt", module=Residual())


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
def test_nested_checkpoints_are_unwrapped(tmp_path, wrap):
    net = chain()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(1, 3, 6, 6)).sum().backward()
    opt.step()
    torch.save({"epoch": 3, wrap: net.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.pth")
    m = read_state_dict(tmp_path / "ckpt.pth")
    np.testing.assert_array_equal(m.filters(), np.concatenate([rows(net[i].weight) for i in CHAIN_3X3]))


def test_bfloat16_state_dict(tmp_path):
    net = chain()
    torch.save({k: v.to(torch.bfloat16) for k, v in net.state_dict().items()}, tmp_path / "bf.pt")
    m = read_state_dict(tmp_path / "bf.pt")
    expected = [rows(net[i].weight.to(torch.bfloat16)) for i in CHAIN_3X3]
    np.testing.assert_array_equal(m.filters(), np.concatenate(expected))
    assert not np.array_equal(m.filters(), np.concatenate([rows(net[i].weight) for i in CHAIN_3X3]))


def test_safetensors_natural_name_order_without_torch(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    tensors = {f"blocks.{i}.conv.weight": rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
               for i in (10, 2, 1, 0)}
    tensors["blocks.3.norm.weight"] = np.ones(2, np.float32)
    save_numpy(tensors, str(tmp_path / "np.safetensors"), metadata={"format": "np"})
    monkeypatch.setitem(sys.modules, "torch", None)
    m = read_safetensors(tmp_path / "np.safetensors")
    assert [lay.name for lay in m.layers] == ["blocks.0.conv", "blocks.1.conv", "blocks.2.conv", "blocks.10.conv"]
    np.testing.assert_array_equal(m.filters(), np.concatenate([rows(tensors[f"blocks.{i}.conv.weight"])
                                                               for i in (0, 1, 2, 10)]))
    assert m.meta["producer"] == "safetensors (np)"


def test_untraceable_module_falls_back_to_registration_order():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Conv2d(4, 4, 3, padding=1)
            self.early = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            x = self.early(x)
            return self.late(x) if x.sum() > 0 else x

    net = Branchy()
    with pytest.warns(UserWarning, match="registered"):
        m = read_module(net)
    assert [(lay.name, lay.conv_depth) for lay in m.layers] == [("late", 0), ("early", 1)]
    np.testing.assert_array_equal(m.filters(), np.concatenate([rows(net.late.weight), rows(net.early.weight)]))


def test_unused_conv_is_skipped_with_warning():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 4, 3)
            self.spare = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.used(x)

    with pytest.warns(UserWarning, match="spare"):
        m = read_module(Unused())
    assert [lay.name for lay in m.layers] == ["used"]


# --------------------------------------------------------------------------------------------------- bad input


class Payload:
    """Unpickling this runs code (writes a marker file): weights_only loading must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


class Custom:
    def __init__(self):
        self.note = "trainer state"


@pytest.mark.parametrize("kind", ["code", "class"])
def test_pickle_checkpoint_is_refused(tmp_path, kind):
    marker = tmp_path / "ran.txt"
    extra = Payload(marker) if kind == "code" else Custom()
    torch.save({"state_dict": chain().state_dict(), "extra": extra}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="arbitrary code; refusing") as e:
        read_state_dict(tmp_path / "evil.pt")
    assert str(tmp_path / "evil.pt") in str(e.value)
    assert ("exec" if kind == "code" else "Custom") in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0.3, 0.8])
def test_truncated_state_dict(tmp_path, cut):
    torch.save(chain().state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(InputError, match="corrupt"):
        read_state_dict(tmp_path / "cut.pt")


def test_not_a_torch_file(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint at all" * 5)
    with pytest.raises(InputError, match=r"x\.pt"):
        read_state_dict(tmp_path / "x.pt")


def test_checkpoint_without_tensors(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(InputError, match="no state_dict"):
        read_state_dict(tmp_path / "meta.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_broken_safetensors(tmp_path, damage):
    save_torch(chain().state_dict(), str(tmp_path / "ok.safetensors"))
    data = (tmp_path / "ok.safetensors").read_bytes()
    bad = data[:-100] if damage == "truncate" else b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + data[24:]
    (tmp_path / "bad.safetensors").write_bytes(bad)
    with pytest.raises(InputError, match="corrupt"):
        read_safetensors(tmp_path / "bad.safetensors")


def test_no_3x3_convolutions(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 5))
    torch.save(net.state_dict(), tmp_path / "no3.pt")
    for read in (lambda: read_module(net), lambda: read_state_dict(tmp_path / "no3.pt")):
        with pytest.raises(InputError, match=r"no 3x3 convolutions.*nothing to add"):
            read()


def test_missing_files_and_wrong_objects(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such model file"):
        read_state_dict(tmp_path / "absent.pt")
    with pytest.raises(InputError, match="no such model file"):
        read_safetensors(tmp_path / "absent.safetensors")
    with pytest.raises(InputError, match=r"expected a torch\.nn\.Module"):
        read_module({"not": "a module"})
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(InputError, match=r"pip install 'filtershift\[torch\]'"):
        read_state_dict(tmp_path / "absent.pt")
