"""`LinearMemory` and `MLPMemory` layers: shapes, chaining, backends agree, gradients reach every parameter."""
import pytest
import torch

from nested_kernels.modules import LinearMemory, MLPMemory, ShortConvolution

D, H, DK = 24, 2, 12


def layers():
    return {
        "linear": lambda backend: LinearMemory(D, H, DK, dgd=True, chunk_size=8, backend=backend),
        "mlp": lambda backend: MLPMemory(D, H, DK, chunk_size=8, self_target=True, backend=backend),
    }


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_layer_chaining(name):
    """A stream split at a multiple of chunk_size, state passed along, equals one call."""
    layer = layers()[name]("torch").double()
    x = torch.randn(2, 37, D, dtype=torch.float64)
    y, _ = layer(x)
    y1, s1 = layer(x[:, :16])
    y2, _ = layer(x[:, 16:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-12, rtol=1e-12)
    assert y.shape == x.shape


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_layer_backends_agree(name):
    torch.manual_seed(0)
    ref_layer = layers()[name]("reference").double()
    torch.manual_seed(0)
    torch_layer = layers()[name]("torch").double()
    x = torch.randn(2, 21, D, dtype=torch.float64)
    y_ref, y = ref_layer(x)[0], torch_layer(x)[0]
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    y_ref.square().sum().backward()
    y.square().sum().backward()
    for (n, p_ref), (_, p) in zip(ref_layer.named_parameters(), torch_layer.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-10, rtol=1e-10, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_layer_gradients_reach_every_parameter(name):
    layer = layers()[name]("torch")
    y, _ = layer(torch.randn(2, 20, D))
    y.square().sum().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_layer_causal():
    """Outputs before t do not depend on inputs at or after t, inside a chunk too."""
    layer = layers()["linear"]("torch").double()
    x = torch.randn(1, 32, D, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 20:] += 1.0
    y, y2 = layer(x)[0], layer(x2)[0]
    torch.testing.assert_close(y[:, :20], y2[:, :20], atol=1e-12, rtol=0)
    assert not torch.allclose(y[:, 20:], y2[:, 20:])


def test_short_convolution_cache():
    conv = ShortConvolution(5, kernel_size=4).double()
    x = torch.randn(2, 11, 5, dtype=torch.float64)
    y, _ = conv(x)
    y1, cache = conv(x[:, :3])
    y2, _ = conv(x[:, 3:], cache)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    x2 = x.clone()
    x2[:, 6:] = 0
    torch.testing.assert_close(conv(x2)[0][:, :6], y[:, :6])            # causal


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_layer_empty_call_passes_the_state(name):
    """T = 0 in the middle of a stream: empty output, the stream continues as if it were not there."""
    layer = layers()[name]("torch").double()
    x = torch.randn(2, 24, D, dtype=torch.float64)
    y, _ = layer(x)
    y1, s1 = layer(x[:, :16])
    y0, s0 = layer(x[:, :0], s1)
    y2, _ = layer(x[:, 16:], s0)
    assert y0.shape == (2, 0, D)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-12, rtol=1e-12)
