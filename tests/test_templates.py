"""Templates: every net renders, parses with caffe_pb2 and builds as a caffe.Net."""
import json
import re

import pytest
from google.protobuf import text_format

from conftest import REPO, python
from hintkd import datasets, engine, netgen

DEPTHS = [8, 14, 20, 26, 32]
DATASETS = ["cifar10", "cifar100", "mnist", "digits"]


def input_net(dataset, depth, **options):
    info = datasets.dataset_info(dataset)
    data = netgen.DataSpec.input_only(info["channels"], info["image_size"], info["num_classes"])
    net = netgen.ResNet("student", depth, options.pop("widths", info["widths"]), info["num_classes"], **options)
    return net, netgen.render_net("n", data, [net], [netgen.Head("cross_entropy", "cross_entropy", logits=net.logits)])


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_every_depth_and_dataset_builds_as_a_caffe_net(caffe, tmp_path, dataset, depth):
    net, text = input_net(dataset, depth)
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    built = caffe.Net(str(path), caffe.TRAIN)
    convs = [name for name in built.params if built.layer_dict[name].type == "Convolution"]
    # 6n+2 weighted layers: conv1, 2 per block, FC; projections are extra shortcut layers.
    assert len(convs) - 2 + 1 == depth
    info = datasets.dataset_info(dataset)
    assert built.blobs["student/fc"].data.shape == (2, info["num_classes"])
    size = info["image_size"]
    assert built.blobs[net.stage_output(3)].data.shape[2:] == (-(-size // 4), -(-size // 4))


@pytest.mark.parametrize("dataset", DATASETS)
def test_solver_and_lmdb_net_parse_and_build(caffe, digits_data, tmp_path, dataset):
    sched = netgen.schedule(dataset, "scratch")
    data = netgen.DataSpec.from_manifest(digits_data, sched)
    solver = netgen.render_solver("train_val.prototxt", sched, data, 1, "snapshots/net")
    parsed = text_format.Parse(solver, engine.caffe_pb2().SolverParameter())
    assert (parsed.base_lr, parsed.momentum, parsed.weight_decay) == pytest.approx((0.1, 0.9, 0.0001))
    assert list(parsed.stepvalue) == sched["stepvalue"] and parsed.max_iter == sched["max_iter"]
    assert parsed.max_iter % parsed.test_interval == 0  # Caffe tests after the last iteration
    if dataset.startswith("cifar"):
        assert (sched["batch_size"], parsed.stepvalue[:], parsed.max_iter) == (128, [32000, 48000], 64000)
    if dataset == "mnist":
        assert (sched["batch_size"], parsed.stepvalue[:], parsed.max_iter) == (64, [18000, 27000], 36000)
    net = netgen.ResNet("student", 8, (16, 32, 64), 10)
    (tmp_path / "train_val.prototxt").write_text(
        netgen.render_net("n", data, [net], [netgen.Head("cross_entropy", "cross_entropy", logits=net.logits)]))
    built = caffe.Net(str(tmp_path / "train_val.prototxt"), caffe.TRAIN)
    assert built.blobs["data"].data.shape == (sched["batch_size"], 1, 8, 8)


def he_et_al_params(depth, widths, channels, classes, projection):
    """Learned parameters of He et al.'s 6n+2 CIFAR ResNet counted by hand: 3x3 convolutions
    without bias, each followed by BatchNorm's scale and shift (2 a channel), n blocks a
    stage, the first of stages 2-3 halving the map and doubling the width (a 1x1 projection
    with its BatchNorm, or zero-padding with none), global pooling and an FC layer."""
    n = (depth - 2) // 6
    count = 9 * channels * widths[0] + 2 * widths[0]
    previous = widths[0]
    for width in widths:
        for block in range(n):
            count += 9 * previous * width + 9 * width * width + 4 * width
            if previous != width and projection:
                count += previous * width + 2 * width
            previous = width
    return count + widths[-1] * classes + classes


@pytest.mark.parametrize("shortcut", netgen.SHORTCUTS)
@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_every_resnet_has_he_et_al_parameter_count(shortcut, dataset, depth):
    """Exact, for each shortcut: ResNet-20 with zero-padding is He et al.'s 0.27M (269,722),
    with projections 272,474; a missing or extra layer anywhere changes the count."""
    info = datasets.dataset_info(dataset)
    _, text = input_net(dataset, depth, shortcut=shortcut)
    assert netgen.count_learned_params(text) == he_et_al_params(depth, info["widths"], info["channels"],
                                                                info["num_classes"], shortcut == "projection")
    if (dataset, depth) == ("cifar10", 20):
        assert netgen.count_learned_params(text) == {"projection": 272474, "zero_pad": 269722}[shortcut]


def test_generate_params_command_prints_the_count():
    out = python(REPO / "generate.py", "params", "--dataset", "cifar10", "--depth", "20").stdout
    assert int(out) == 272474


def test_frozen_net_learns_nothing_and_keeps_batchnorm_statistics():
    data = netgen.DataSpec.input_only(3, 32, 10)
    teacher = netgen.ResNet("teacher", 14, (16, 32, 64), 10, frozen=True)
    proto = netgen.validate(netgen.render_net("t", data, [teacher], []))
    layers = [layer for layer in proto.layer if layer.name.startswith("teacher/")]
    learnable = [layer for layer in layers if layer.type in ("Convolution", "BatchNorm", "Scale", "InnerProduct")]
    assert len(learnable) > 20
    for layer in layers:
        if layer in learnable:  # a blob without a param spec would learn at Caffe's default rate
            assert layer.param, layer.name
        for param in layer.param:
            assert (param.lr_mult, param.decay_mult) == (0, 0), layer.name
        if layer.type == "BatchNorm":
            assert layer.batch_norm_param.HasField("use_global_stats") and layer.batch_norm_param.use_global_stats


def test_truncated_net_stops_at_its_block():
    data = netgen.DataSpec.input_only(3, 32, 10)
    net = netgen.ResNet("teacher", 14, (16, 32, 64), 10, upto=4)
    proto = netgen.validate(netgen.render_net("t", data, [net], []))
    tops = {top for layer in proto.layer for top in layer.top}
    assert "teacher/stage2/block2" in tops and "teacher/stage3/block1" not in tops and "teacher/fc" not in tops


@pytest.mark.parametrize("depth,widths,shortcut,message", [
    (9, (16, 32, 64), "projection", "not 6n+2"),
    (2, (16, 32, 64), "projection", "not 6n+2"),
    (8, (16, 30, 64), "zero_pad", "twice as wide"),
    (8, (16, 32), "projection", "three positive numbers"),
])
def test_bad_net_arguments_are_refused(depth, widths, shortcut, message):
    with pytest.raises(netgen.GenerateError, match=re.escape(message)):
        netgen.ResNet("student", depth, widths, 10, shortcut)


def test_generate_net_writes_a_standalone_train_val(tmp_path, digits_data):
    out = tmp_path / "net.prototxt"
    python(REPO / "generate.py", "net", "--dataset", "digits", "--depth", "14", "--data", digits_data, "--out", out)
    proto = netgen.validate(out.read_text())
    data_layers = [layer for layer in proto.layer if layer.type == "Data"]
    assert [layer.data_param.source for layer in data_layers] == [str(digits_data / "train_lmdb"),
                                                                 str(digits_data / "test_lmdb")]
    assert json.loads((digits_data / "manifest.json").read_text())["test_count"] == 300
    assert data_layers[1].data_param.batch_size == 100


def test_quick_runs_average_batchnorm_statistics_over_a_shorter_window():
    assert netgen.bn_fraction_for(1.0) == 0.999
    assert netgen.bn_fraction_for(0.01) == 0.9
