"""The CNN task's networks and classifier: the report's shapes, layer names, the L2 term."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from hw2.models.classifier import ImageClassifier
from hw2.models.food_cnn import FoodCNN, FoodCNNBN, linear_in_features, resnet18


def classifier(image_size: int = 32, l2: float = 0.0, channels_last: bool = False,
               net=FoodCNN, num_classes: int = 4, **kwargs) -> ImageClassifier:
    return ImageClassifier(functools.partial(net), num_classes=num_classes,
                           class_names=[f"c{i}" for i in range(num_classes)],
                           image_size=image_size, channels_last=channels_last, l2=l2,
                           optimizer=functools.partial(torch.optim.Adam, lr=1e-3), **kwargs)


@pytest.mark.parametrize(("size", "features"), [(512, 32 * 32 * 32), (256, 32 * 16 * 16),
                                                (64, 32 * 4 * 4), (32, 32 * 2 * 2),
                                                (48, 32 * 3 * 3)])
def test_linear_size_follows_image_size(size: int, features: int) -> None:
    assert linear_in_features(size) == features
    net = FoodCNN(num_classes=11, image_size=size)
    assert net.fc.in_features == features and net.fc.out_features == 11
    if size <= 64:
        assert net(torch.zeros(2, 3, size, size)).shape == (2, 11)


def test_report_network_exactly() -> None:
    net = FoodCNN(num_classes=11, image_size=512)
    for name, cin, cout in (("conv1", 3, 16), ("conv2", 16, 32), ("conv3", 32, 32)):
        conv = getattr(net, name)
        assert isinstance(conv, nn.Conv2d)
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == \
            (cin, cout, (5, 5), (2, 2))
    assert [net.pool1.kernel_size, net.pool2.kernel_size, net.pool3.kernel_size] == [2, 2, 4]
    assert (net.fc.in_features, net.fc.out_features) == (32 * 32 * 32, 11)
    names = [n for n, _ in classifier().named_parameters()]
    assert names == [f"net.{layer}.{p}" for layer in ("conv1", "conv2", "conv3", "fc")
                     for p in ("weight", "bias")]


@pytest.mark.parametrize("size", [0, 8, 40, 100])
def test_image_size_not_multiple_of_16_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match=rf"data.image_size={size} must be a positive multiple"):
        FoodCNN(num_classes=3, image_size=size)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_l2_on_off_changes_loss_by_exactly_the_penalty() -> None:
    torch.manual_seed(0)
    model = classifier(l2=0.0)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 4, (6,))
    plain = model.training_step((x, y), 0)
    model.l2 = 0.01
    penalised = model.training_step((x, y), 0)
    weights = sum(float(getattr(model.net, n).weight.detach().pow(2).sum())
                  for n in ("conv1", "conv2", "conv3", "fc"))  # weights only, not biases
    assert float((penalised - plain).detach()) == pytest.approx(0.01 * weights, rel=1e-5)
    assert float(model.l2_penalty().detach()) == pytest.approx(0.01 * weights, rel=1e-5)


def test_channels_last_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    a, b = classifier(channels_last=False), classifier(channels_last=True)
    b.load_state_dict(a.state_dict())
    assert b.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)


def test_bn_variant_and_resnet18_shapes() -> None:
    bn = classifier(image_size=32, net=FoodCNNBN)
    assert {"conv1", "conv2", "conv3", "fc", "bn1"} <= dict(bn.net.named_children()).keys()
    assert bn(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert bn(torch.randn(2, 3, 64, 64)).shape == (2, 4)  # global average pooling
    res = classifier(image_size=32, net=resnet18)
    assert res(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_resnet18_weights_path_replaces_other_head(tmp_path: Path) -> None:
    source = resnet18(num_classes=1000, image_size=64)
    path = tmp_path / "r18.pt"
    torch.save(source.state_dict(), path)
    net = resnet18(num_classes=5, image_size=64, weights_path=str(path))
    torch.testing.assert_close(net.conv1.weight, source.conv1.weight)
    assert net.fc.out_features == 5
    with pytest.raises(FileNotFoundError, match="model.net.weights_path=.*missing.pt"):
        resnet18(num_classes=5, weights_path=str(tmp_path / "missing.pt"))


def test_test_results_per_class_and_confusion() -> None:
    model = classifier()
    preds = torch.tensor([0, 1, 1, 2, 0])
    y = torch.tensor([0, 1, 2, 2, 1])
    model.test_class_acc.update(preds, y)
    model.test_confusion.update(preds, y)
    model.on_test_epoch_end()
    r = model.test_results
    assert r["confusion"].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    acc = r["class_acc"].tolist()
    assert acc[:3] == [1.0, 0.5, 0.5] and acc[3] != acc[3]  # class 3 absent: nan


def test_tta_flip_averages_the_mirror_image_at_evaluation_only() -> None:
    torch.manual_seed(0)
    plain, tta = classifier(), classifier(tta_flip=True)
    tta.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 32, 32)
    plain.eval()
    tta.eval()
    torch.testing.assert_close(tta(x), (plain(x) + plain(x.flip(-1))) / 2)
    assert not torch.allclose(tta(x), plain(x))  # the mirror image counts
    tta.train()
    plain.train()
    torch.testing.assert_close(tta(x), plain(x))  # training flips at random instead


def test_dropout_before_fc_trains_only_and_adds_no_weights() -> None:
    torch.manual_seed(0)
    net = FoodCNN(num_classes=4, image_size=32, dropout=0.5)
    assert [n for n, _ in net.named_parameters()] == [
        n for n, _ in FoodCNN(num_classes=4, image_size=32).named_parameters()]
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.allclose(net(x), net(x))
    with pytest.raises(ValueError, match="model.net.dropout"):
        FoodCNN(num_classes=4, image_size=32, dropout=1.0)
