"""The nets and solvers each method generates carry the paper's values. Every expected
value below is written out from the paper (section cited), never read from
solvers/*.json: a wrong table entry, template or wiring fails here.

The prototxts are parsed with Caffe's own caffe_pb2; one generated Stage 2 net is run to
check the KD term's value against eq. 2 and its gradient by finite differences through
the whole net."""
import json

import numpy as np
import pytest

from conftest import REPO, python, write_cifar_archive, write_mnist_folder
from hintkd import engine

# sec. 3 / Fig. 3: 6n+2 ResNets; Table 1's teacher ResNet-26 and student ResNet-14, n = 4 and 2.
T_BLOCKS, S_BLOCKS = 4, 2
TAU = 3  # sec. 2.1: "we set tau = 3 for all experiments"
LAMBDA = {"cifar10": 5, "cifar100": 5, "mnist": 5}  # sec. 3.1 and 3.2: lambda = 5 (CIFAR-100: "the same KD training")
SL_KD_LAMBDA = {"cifar10": 5, "mnist": 3}  # sec. 3.3: "lambda was set to 5 for CIFAR-10 and 3 for MNIST"
HINT_LR = 1e-4  # sec. 3.1-3.2: hint training at a learning rate of 1e-4
# sec. 3.1 (CIFAR-10), 3.2 (MNIST): hint-KD 25k iterations; proposed 3k/7k/15k (the same 25k);
# sec. 3.1 (CIFAR-100): 35k; proposed 5k/15k/15k.
HINT_ITERATIONS = {"cifar10": 25000, "cifar100": 35000, "mnist": 25000}
LAYERWISE_ITERATIONS = {"cifar10": [3000, 7000, 15000], "cifar100": [5000, 15000, 15000], "mnist": [3000, 7000, 15000]}
# Stage 2 and the nets alone: He et al.'s schedule as the paper gives it. CIFAR-10 (sec. 3.1):
# batch 128, lr 0.1, /10 at 32k and 48k, end at 64k; CIFAR-100 (sec. 3.1) the same; MNIST
# (sec. 3.2): batch 64, 18k/27k/36k.
SCRATCH = {"cifar10": (128, [32000, 48000], 64000), "cifar100": (128, [32000, 48000], 64000),
           "mnist": (64, [18000, 27000], 36000)}
# The nets' input and widths: CIFAR 32x32 RGB, widths {16, 32, 64} (sec. 3, Fig. 2), CIFAR-100's
# four times wider {64, 128, 256} (sec. 3.1); MNIST 28x28 grey, feature maps {28, 14, 7} (sec. 3.2).
INPUT = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "mnist": (1, 28, 10)}  # channels, size, classes
WIDTHS = {"cifar10": [16, 32, 64], "cifar100": [64, 128, 256], "mnist": [16, 32, 64]}
DATASETS = ["cifar10", "cifar100", "mnist"]
SL_STEP_ITERATIONS = {"cifar10": 12000, "mnist": 8000}  # sec. 3.3


def parse(path, message="NetParameter"):
    from google.protobuf import text_format
    return text_format.Parse(path.read_text(), getattr(engine.caffe_pb2(), message)())


def layers_of(folder):
    return list(parse(folder / "train_val.prototxt").layer)


def by_type(layers, kind):
    return [layer for layer in layers if layer.type == kind]


def logits(layers, role):
    return [layer for layer in by_type(layers, "InnerProduct") if layer.name.startswith(role + "/")][-1].top[0]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """plan(dataset, method, *options) -> {stage folder name: folder}, written by generate.py plan."""
    root = tmp_path_factory.mktemp("paper_nets")
    rng = np.random.RandomState(0)
    write_cifar_archive(root / "cifar.tar.gz", rng, per_batch=20)
    write_cifar_archive(root / "cifar100.tar.gz", rng, per_batch=100, classes=100, cifar100=True)
    write_mnist_folder(root / "mnist", rng, n_train=40, n_test=20)
    for dataset, source in (("cifar10", root / "cifar.tar.gz"), ("cifar100", root / "cifar100.tar.gz"),
                            ("mnist", root / "mnist")):
        python(REPO / "data_prep" / "prepare.py", dataset, "--no-md5", "--source", source,
               "--out", root / "data" / dataset)
    made = {}

    def plan(dataset, method, *options, depths=("26", "14")):
        key = (dataset, method, depths, options)
        if key not in made:
            out = root / f"runs{len(made)}"
            printed = python(REPO / "generate.py", "plan", dataset, *depths, method, *options,
                             "--data", root / "data" / dataset, "--out", out).stdout.split()
            from pathlib import Path
            made[key] = {Path(p).name: Path(p) for p in printed}
        return made[key]
    return plan


# --- Stage 2: eq. 2 ---------------------------------------------------------------------

@pytest.mark.parametrize("dataset, method", [(d, m) for d in DATASETS
                                              for m in ("kd", "hint-kd", "hint-kd+", "proposed", "concurrent", "sl-resnet-kd")
                                              if d in SL_KD_LAMBDA or m != "sl-resnet-kd"])  # sec. 3.3: no CIFAR-100
def test_stage2_is_eq2_with_the_papers_tau_and_lambda(planned, dataset, method):
    folders = planned(dataset, method)
    nets = [folders[f"stage2-net{k}"] for k in (1, 2, 3)]  # sec. 3.1: Nets 1-3
    for folder in nets:
        layers = layers_of(folder)
        student, teacher = logits(layers, "student"), logits(layers, "teacher")
        (ce,) = by_type(layers, "SoftmaxWithLoss")
        assert list(ce.bottom) == [student, "label"] and list(ce.loss_weight) == [1]
        (kd,) = by_type(layers, "Python")
        assert (kd.python_param.module, kd.python_param.layer) == ("hintkd.caffe_layers", "SoftTargetCrossEntropy")
        # CE(P_T, P_S): the student's logits first, the teacher's second, no gradient to the teacher.
        assert list(kd.bottom) == [student, teacher] and list(kd.propagate_down) == [True, False]
        params = json.loads(kd.python_param.param_str)
        assert params["tau"] == TAU and not params["tau_squared"]  # the paper has no tau^2 factor
        expected = (SL_KD_LAMBDA if method == "sl-resnet-kd" else LAMBDA)[dataset]
        assert list(kd.loss_weight) == [expected]
    seeds = {parse(f / "solver.prototxt", "SolverParameter").random_seed for f in nets}
    assert len(seeds) == 3  # three different initialisations of what Stage 1 did not train


def test_the_mnist_lambda_of_sl_resnet_kd_is_not_the_kd_one(planned):
    """sec. 3.3 gives SL-ResNet-KD lambda = 3 on MNIST, 5 elsewhere; KD keeps 5 on MNIST."""
    weights = {m: by_type(layers_of(planned("mnist", m)["stage2-net1"]), "Python")[0].loss_weight[0]
               for m in ("kd", "sl-resnet-kd")}
    assert weights == {"kd": 5, "sl-resnet-kd": 3}


@pytest.mark.parametrize("dataset", DATASETS)
def test_stage2_and_the_nets_alone_follow_he_et_al_schedule(planned, dataset):
    batch, steps, end = SCRATCH[dataset]
    folders = planned(dataset, "proposed")
    for folder in (folders["stage2-net1"], *planned(dataset, "student").values()):
        solver = parse(folder / "solver.prototxt", "SolverParameter")
        assert (solver.base_lr, solver.lr_policy, solver.gamma) == (pytest.approx(0.1), "multistep", pytest.approx(0.1))
        assert list(solver.stepvalue) == steps and solver.max_iter == end
        # sec. 3: momentum 0.9, weight decay 1e-4 (He et al.)
        assert solver.momentum == pytest.approx(0.9) and solver.weight_decay == pytest.approx(1e-4)
        train_data = [layer for layer in by_type(layers_of(folder), "Data") if layer.include[0].phase == 0]
        assert train_data[0].data_param.batch_size == batch


@pytest.mark.parametrize("dataset", DATASETS)
def test_each_datasets_input_widths_and_classes_are_the_papers(planned, dataset):
    """Every 3x3 convolution of each net has its stage's width, the FC layer one output per
    class, and the test input is the dataset's own image size (no crop at test time)."""
    channels, size, classes = INPUT[dataset]
    layers = layers_of(planned(dataset, "kd")["stage2-net1"])
    for role in ("teacher", "student"):
        for k, width in enumerate(WIDTHS[dataset], start=1):
            convs = [layer for layer in by_type(layers, "Convolution") if layer.name.startswith(f"{role}/stage{k}/")
                     and layer.convolution_param.kernel_size[0] == 3]
            assert convs and {c.convolution_param.num_output for c in convs} == {width}, (role, k)
        assert by_type(layers, "InnerProduct") and logits(layers, role)
        (fc,) = [layer for layer in by_type(layers, "InnerProduct") if layer.name == f"{role}/fc"]
        assert fc.inner_product_param.num_output == classes
    from conftest import read_lmdb
    from pathlib import Path
    (test,) = [layer for layer in by_type(layers, "Data") if layer.include[0].phase == 1]
    assert read_lmdb(Path(test.data_param.source).parent, "test")[0].shape[1:] == (channels, size, size)
    assert not test.transform_param.crop_size


def test_the_schedules_at_one_sixteenth_are_the_papers_divided_by_16(planned):
    """--scale 0.0625 (README section 3): every iteration count of the paper over 16, rounded
    as docs/study-table1.md states them: Stage 2 4,000 with steps at 2,000 and 3,000, a
    hint 1,562 (25,000 / 16), the layer-wise steps 188, 438 and 938."""
    def solver(method, name):
        return parse(planned("cifar10", method, "--scale", "0.0625")[name] / "solver.prototxt", "SolverParameter")
    stage2 = solver("proposed", "stage2-net1")
    assert (stage2.max_iter, list(stage2.stepvalue)) == (4000, [2000, 3000])
    assert solver("hint-kd", "stage1").max_iter == 1562
    assert [solver("proposed", f"stage1-step{k}").max_iter for k in (1, 2, 3)] == [188, 438, 938]
    assert stage2.base_lr == pytest.approx(0.1) and solver("hint-kd", "stage1").base_lr == pytest.approx(HINT_LR)


# --- the frozen teacher ------------------------------------------------------------------

BLOBS = {"Convolution": lambda l: 1 + l.convolution_param.bias_term, "BatchNorm": lambda l: 3,
         "Scale": lambda l: 1 + l.scale_param.bias_term, "InnerProduct": lambda l: 1 + l.inner_product_param.bias_term}


@pytest.mark.parametrize("method,stage", [("kd", "stage2-net1"), ("hint-kd", "stage1"), ("proposed", "stage1-step3"),
                                          ("concurrent", "stage1"), ("sl-resnet-kd", "stage2-net2")])
def test_the_teacher_learns_nothing_and_keeps_its_statistics(planned, method, stage):
    layers = layers_of(planned("cifar10", method)[stage])
    teacher = [layer for layer in layers if layer.name.startswith("teacher/") and layer.type in BLOBS]
    assert teacher, "no teacher layers"
    for layer in teacher:
        # every learnable blob has a param spec, and each says lr_mult 0, decay_mult 0
        assert len(layer.param) == BLOBS[layer.type](layer), layer.name
        assert all(p.lr_mult == 0 and p.decay_mult == 0 for p in layer.param), layer.name
        if layer.type == "BatchNorm":  # Caffe updates the statistics in TRAIN unless told
            assert layer.batch_norm_param.use_global_stats, layer.name
    student_bn = [layer for layer in by_type(layers, "BatchNorm") if layer.name.startswith("student/")]
    assert student_bn and not any(layer.batch_norm_param.use_global_stats for layer in student_bn)
    assert any(p.lr_mult > 0 for layer in layers if layer.name.startswith("student/") for p in layer.param)


# --- Stage 1: eqs. 1, 3-5, 7 --------------------------------------------------------------

def hints(layers):
    heads = by_type(layers, "EuclideanLoss")
    for head in heads:  # the student's blob is pulled to the teacher's, never the reverse
        assert list(head.propagate_down) == [True, False], head.name
    return [(h.bottom[0], h.bottom[1], h.loss_weight[0]) for h in heads]


def stage_output(role, stage):
    return f"{role}/stage{stage}/block{T_BLOCKS if role == 'teacher' else S_BLOCKS}"


@pytest.mark.parametrize("dataset", DATASETS)
def test_hint_kd_pairs_the_middle_layers_and_hint_kd_plus_the_last(planned, dataset):
    # sec. 3.1: FitNets' hint between the middle layers of the two nets; Hint-KD+ uses the
    # whole of each net but the FC layer (the last residual stage's output).
    for method, stage in (("hint-kd", 2), ("hint-kd+", 3)):
        folder = planned(dataset, method)["stage1"]
        assert hints(layers_of(folder)) == [(stage_output("student", stage), stage_output("teacher", stage), 1)]
        solver = parse(folder / "solver.prototxt", "SolverParameter")
        assert (solver.base_lr, solver.lr_policy, solver.max_iter) == (pytest.approx(HINT_LR), "fixed",
                                                                       HINT_ITERATIONS[dataset])


@pytest.mark.parametrize("dataset", DATASETS)
def test_the_proposed_method_trains_each_guided_layer_in_turn(planned, dataset):
    """eqs. 3-5, Fig. 1: step k pulls the student's k-th stage output to the teacher's, and
    holds only the student up to that stage (what W_G_k is)."""
    folders = planned(dataset, "proposed")
    for k, iterations in enumerate(LAYERWISE_ITERATIONS[dataset], start=1):
        folder = folders[f"stage1-step{k}"]
        layers = layers_of(folder)
        assert hints(layers) == [(stage_output("student", k), stage_output("teacher", k), 1)]
        student_stages = {int(layer.name.split("/")[1][5:]) for layer in layers
                          if layer.name.startswith("student/stage")}
        assert student_stages == set(range(1, k + 1))
        assert not [layer for layer in by_type(layers, "InnerProduct") if layer.name.startswith("student/")]
        solver = parse(folder / "solver.prototxt", "SolverParameter")
        assert (solver.base_lr, solver.max_iter) == (pytest.approx(HINT_LR), iterations)
        if k > 1:  # each step starts from the step before
            init = json.loads((folder / "stage.json").read_text())["init"]
            assert any(str(folders[f"stage1-step{k - 1}"]) in entry["weights"] for entry in init)


def test_concurrent_hints_all_at_once_with_the_weights_a_i(planned):
    """eq. 7 and sec. 4: the proposed method's three pairs at once, equal a_i by default,
    the a_i given with --hint-weights otherwise; the proposed method's total iterations.
    Eq. 7 is 1/(2N) sum_i a_i ||F_H^i - F_G^i||^2 over the N pairs, and each EuclideanLoss
    head is 1/2 ||.||^2 (per image), so head i's loss weight is a_i / N."""
    pairs = [(stage_output("student", k), stage_output("teacher", k)) for k in (1, 2, 3)]
    equal = planned("cifar10", "concurrent")["stage1"]
    assert hints(layers_of(equal)) == [(*p, pytest.approx(1 / 3)) for p in pairs]
    assert parse(equal / "solver.prototxt", "SolverParameter").max_iter == sum(LAYERWISE_ITERATIONS["cifar10"])
    weighted = planned("cifar10", "concurrent", "--hint-weights", "0.5,0.3,0.2")["stage1"]
    assert hints(layers_of(weighted)) == [(*p, pytest.approx(a / 3)) for p, a in zip(pairs, (0.5, 0.3, 0.2))]


def test_the_regressor_of_table_5_is_a_gaussian_convolution_without_bias(planned):
    """sec. 4 (Table 5): a wider teacher {32, 64, 128}; a convolutional regressor with Gaussian
    initialization and no bias term maps the student's guided layer to the teacher's width."""
    folder = planned("cifar10", "hint-kd", "--teacher-widths", "32,64,128", "--regressor")["stage1"]
    layers = layers_of(folder)
    (regressor,) = [layer for layer in by_type(layers, "Convolution") if "regressor" in layer.name]
    conv = regressor.convolution_param
    assert list(regressor.bottom) == [stage_output("student", 2)]
    assert conv.num_output == 64 and not conv.bias_term  # the teacher's middle width
    assert conv.weight_filler.type == "gaussian" and conv.weight_filler.std == pytest.approx(0.01)  # README: our choice
    assert regressor.param[0].lr_mult > 0
    assert hints(layers) == [(regressor.top[0], stage_output("teacher", 2), 1)]


def test_sl_resnet_trains_one_residual_module_at_a_time(planned):
    """sec. 3.3, Fig. 6: one step per residual module, each with a fresh pooling + FC head."""
    folders = planned("cifar10", "sl-resnet")
    steps = sorted(name for name in folders if name.startswith("stage1"))
    assert len(steps) == 3 * S_BLOCKS
    heads = set()
    for name in steps:
        layers = layers_of(folders[name])
        (fc,) = [layer for layer in by_type(layers, "InnerProduct")]
        heads.add(fc.name)
        assert parse(folders[name] / "solver.prototxt", "SolverParameter").max_iter == SL_STEP_ITERATIONS["cifar10"]
    assert len(heads) == len(steps)


# --- the data: sec. 3.1 (He et al.'s preprocessing) ---------------------------------------

def test_cifar_trains_on_random_crops_of_padded_images_and_tests_on_the_originals(planned):
    """sec. 3.1: four pixels padded on each side (40x40), random 32x32 crops for training
    (and He et al.'s horizontal flips), the original 32x32 images for testing."""
    folder = planned("cifar10", "proposed")["stage2-net1"]
    train, test = sorted(by_type(layers_of(folder), "Data"), key=lambda layer: layer.include[0].phase)
    assert train.transform_param.crop_size == 32 and train.transform_param.mirror
    assert not test.transform_param.crop_size and not test.transform_param.mirror
    assert len(train.transform_param.mean_value) == 3
    assert list(train.transform_param.mean_value) == list(test.transform_param.mean_value)
    from conftest import read_lmdb
    from pathlib import Path
    data = Path(train.data_param.source).parent
    assert read_lmdb(data, "train")[0].shape[2:] == (40, 40)
    assert read_lmdb(data, "test")[0].shape[2:] == (32, 32)


# --- the KD term as wired, run ------------------------------------------------------------

@pytest.mark.parametrize("options, factor", [((), 1), (("--tau-squared",), TAU ** 2)], ids=["paper", "tau-squared"])
def test_the_kd_term_and_its_gradient_through_a_generated_stage2_net(planned, caffe, options, factor):
    """The Stage 2 net as generated: its kd blob is CE(P_T, P_S) at tau = 3 from the two
    nets' logits (times tau^2 under --tau-squared, Hinton et al.'s factor), and the gradient
    Caffe computes for student weights matches finite differences of CE + lambda * KD through
    the whole net, under each option. With the bottoms swapped, no gradient to the student,
    or the factor left out of the backward pass, the KD part of the gradient is wrong, and it
    is large enough here to be seen."""
    folder = planned("cifar10", "kd", *options)["stage2-net1"]
    import os
    here = os.getcwd()
    os.chdir(folder)
    try:
        net = caffe.Net("train_val.prototxt", caffe.TRAIN)
    finally:
        os.chdir(here)
    rng = np.random.RandomState(3)
    for name, layer in zip(net._layer_names, net.layers):
        if name.startswith("teacher/") and layer.type == "BatchNorm":  # stored statistics of a trained net
            layer.blobs[0].data[...] = rng.randn(*layer.blobs[0].data.shape) * 0.1
            layer.blobs[1].data[...] = 1.0
            layer.blobs[2].data[...] = 1.0
    first = list(net._layer_names)[1]
    net.forward()  # one batch read by the Data layer; every pass below reuses it

    weights = {"cross_entropy": 1.0, "kd": float(LAMBDA["cifar10"])}

    def objective(terms=weights):
        out = net.forward(start=first)
        return sum(w * float(out[name]) for name, w in terms.items())

    student, teacher = net.blobs["student/fc"].data.astype(np.float64), net.blobs["teacher/fc"].data.astype(np.float64)

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    reference = -(softmax(teacher / TAU) * np.log(softmax(student / TAU))).sum() / len(student)
    assert float(net.blobs["kd"].data) == pytest.approx(factor * reference, rel=1e-5)

    objective()
    for blobs in net.params.values():
        for blob in blobs:
            blob.diff[...] = 0
    net.backward()
    fc = net.params["student/fc"][0]
    analytic = fc.diff.copy()
    entries = [tuple(rng.randint(0, s) for s in fc.data.shape) for _ in range(8)]
    eps = 1e-2
    numeric, numeric_ce = [], []
    for index in entries:
        saved = fc.data[index]
        values = {}
        for sign in (1, -1):
            fc.data[index] = saved + sign * eps
            values[sign] = (objective(), objective({"cross_entropy": 1.0}))
        fc.data[index] = saved
        numeric.append((values[1][0] - values[-1][0]) / (2 * eps))
        numeric_ce.append((values[1][1] - values[-1][1]) / (2 * eps))
    numeric, numeric_ce = np.array(numeric), np.array(numeric_ce)
    got = np.array([analytic[i] for i in entries])
    scale = np.abs(numeric).max()
    assert np.abs(numeric - numeric_ce).max() > 0.2 * scale  # the KD part is a large share of the gradient
    assert np.abs(got - numeric).max() < 0.02 * scale, (got, numeric, numeric_ce)
