"""A trained student as a user takes it away: deploy.prototxt, student.caffemodel and
preprocessing.json in the stage's export/ folder, usable with Caffe alone.

The student's layers are taken from the stage's train_val.prototxt with caffe_pb2
(data layers, the teacher and the loss heads left out) and get their own names
back ("student/conv1" -> "conv1": for a user's student, the names of its own
prototxt, so its caffemodel also loads into the user's deploy.prototxt); an
Input layer of one image and a Softmax "prob" on the logits close the net.
"""
import json
from pathlib import Path

from hintkd import engine, handoff, netgen
from hintkd.atomic import write_json, write_text

FOLDER = "export"
ROLE = "student/"


def _own_name(name):
    return name[len(ROLE):] if name.startswith(ROLE) else name


def export_student(stage_dir, weights):
    """Writes export/ for a stage that trains the whole student; returns the folder."""
    from google.protobuf import text_format
    stage_dir = Path(stage_dir)
    net = netgen.validate((stage_dir / "train_val.prototxt").read_text())
    # The logits: what the cross-entropy head reads (prototxt_templates/heads.prototxt.j2).
    (logits,) = [layer.bottom[0] for layer in net.layer if layer.type == "SoftmaxWithLoss"]
    (test_data,) = [layer for layer in net.layer if layer.type == "Data" and layer.include[0].phase == 1]
    manifest = json.loads((Path(test_data.data_param.source).parent / "manifest.json").read_text())
    shape = [1, manifest["channels"], manifest["image_size"], manifest["image_size"]]

    deploy = engine.caffe_pb2().NetParameter()
    deploy.name = _own_name(net.name)
    data = deploy.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add(dim=shape)
    kept = []
    for layer in net.layer:
        if not layer.name.startswith(ROLE) or "/regressor" in layer.name:
            continue
        copy = deploy.layer.add()
        copy.CopyFrom(layer)
        copy.name = _own_name(layer.name)
        copy.bottom[:] = [_own_name(b) for b in layer.bottom]
        copy.top[:] = [_own_name(t) for t in layer.top]
        kept.append(layer.name)
    deploy.layer.add(name="prob", type="Softmax", bottom=[_own_name(logits)], top=["prob"])

    folder = stage_dir / FOLDER
    folder.mkdir(exist_ok=True)
    # Layers without weights (ReLU, Pooling) are not in the file and so not written.
    handoff.write_renamed(weights, folder / "student.caffemodel", {_own_name(name): name for name in kept})
    write_text(folder / "deploy.prototxt",
               f"# The trained student, for Caffe alone: weights student.caffemodel, input as preprocessing.json says\n"
               + text_format.MessageToString(deploy))
    transform = test_data.transform_param
    write_json(folder / "preprocessing.json", {
        "input": shape,
        "pixels": "0-255, channels in RGB order as data_prep writes them (not the BGR of OpenCV and "
                  "caffe.io.Transformer's usual setup)",
        # one value a channel, 0 where the dataset subtracts none, so that the formula holds as written
        "mean": [round(m, 4) for m in transform.mean_value] or [0.0] * shape[1],
        "scale": transform.scale if transform.HasField("scale") else 1.0,
        "formula": "(pixel - mean[channel]) * scale",
        "outputs": {"prob": "class probabilities", _own_name(logits): "logits"},
        "classes": manifest.get("classes"),
    })
    return folder
