import pytest
import torch
import torch.nn.functional as F

from pyro_ncl.encoders import build_encoder
from pyro_ncl.non_negativity.rep_relu import rep_relu


def test_rep_relu_value_is_relu_and_gradient_is_gelus():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64, requires_grad=True)
    y = rep_relu(x)
    assert torch.equal(y, F.relu(x))
    (grad,) = torch.autograd.grad(y.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (gelu_grad,) = torch.autograd.grad(F.gelu(x2).sum(), x2)
    assert torch.allclose(grad, gelu_grad, atol=1e-12)
    assert (grad[x < 0] != 0).all()  # no dead units: negative inputs still get gradient


@pytest.mark.parametrize("backbone,channels,size,stem", [("small_resnet", 1, 28, True), ("small_resnet", 3, 32, True),
                                                         ("resnet18", 1, 28, True), ("resnet18", 3, 64, False)])
def test_encoder_shapes_and_non_negativity(backbone, channels, size, stem):
    enc = build_encoder(backbone, channels, width=8, cifar_stem=stem, hidden_dim=32, feature_dim=16,
                        non_negativity="relu")
    h, z = enc(torch.randn(4, channels, size, size))
    assert h.shape == (4, enc.backbone_dim) and z.shape == (4, 16)
    assert (z >= 0).all()


def test_cl_features_are_signed():
    enc = build_encoder("small_resnet", 1, 8, True, 32, 16, "none")
    _, z = enc(torch.randn(8, 1, 28, 28))
    assert (z < 0).any()


def test_feature_dim_zero_is_refused():
    with pytest.raises(ValueError, match="feature dimension"):
        build_encoder("small_resnet", 1, 8, True, 32, 0, "relu")
