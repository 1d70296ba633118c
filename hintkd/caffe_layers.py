"""Caffe Python layers (python_param { module: "hintkd.caffe_layers" }).

SoftTargetCrossEntropy is the KD term of eq. 2, CE(P_T, P_S) with
P = softmax(logits / tau). Caffe has no stock soft-target cross-entropy, and a
chain of stock layers takes the log of an underflowed softmax for extreme
logits; here every softmax subtracts its row maximum first.
"""
import json

import caffe
import numpy as np


def log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class SoftTargetCrossEntropy(caffe.Layer):
    """bottom[0]: student logits (N x C), bottom[1]: teacher logits (N x C).

    loss = -1/N sum_n sum_c P_T log P_S, both softened by tau. param_str is
    JSON: {"tau": 3, "tau_squared": false}; tau_squared multiplies the loss by
    tau^2 as Hinton et al. suggest (the paper does not). The teacher gets no
    gradient."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise ValueError("SoftTargetCrossEntropy takes student and teacher logits")
        params = json.loads(self.param_str or "{}")
        if "tau" not in params:  # no silent default: a tau lost on the way must not look like the paper's
            raise ValueError(f"SoftTargetCrossEntropy needs tau in its param_str, got '{self.param_str}'")
        self.tau = float(params["tau"])
        self.factor = self.tau ** 2 if params.get("tau_squared", False) else 1.0

    def reshape(self, bottom, top):
        if bottom[0].data.shape != bottom[1].data.shape:
            raise ValueError(f"student logits {bottom[0].data.shape} and teacher logits "
                             f"{bottom[1].data.shape} differ in shape")
        top[0].reshape(1)

    def forward(self, bottom, top):
        n = bottom[0].data.shape[0]
        student = bottom[0].data.reshape(n, -1).astype(np.float64) / self.tau
        teacher = bottom[1].data.reshape(n, -1).astype(np.float64) / self.tau
        self.log_p_student = log_softmax(student)
        self.p_teacher = np.exp(log_softmax(teacher))
        top[0].data[0] = -self.factor * (self.p_teacher * self.log_p_student).sum() / n

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            n = bottom[0].data.shape[0]
            grad = (np.exp(self.log_p_student) - self.p_teacher) / (self.tau * n)
            bottom[0].diff[...] = (top[0].diff[0] * self.factor * grad).reshape(bottom[0].diff.shape)
