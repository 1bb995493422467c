"""RNN, GRU and LSTM -> one ILoop per direction.

X @ W^T (+ the biases that sit outside the recurrence) is one matrix multiply over the whole
sequence before the loop; the loop iterates over its time steps (backwards for the reverse
direction), keeps H (and C) in recurrences and computes the gates from H @ R^T. sequence_lens
freezes a batch entry's state past its length and zeroes its Y there. Y is the loop's
concatenated output (reversed back for the reverse direction), Y_h/Y_c its last values;
bidirectional stacks the two loops; layout=1 transposes in and out.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from trtc.lower.ops.attention import arange, concat, dim, given, scalar, select
from trtc.lower.registry import Constraint, attribute_in, converter, known_rank, tensor_types

X, W, R, B, SEQUENCE_LENS, INITIAL_H, INITIAL_C, P = range(8)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
# ONNX activation -> (TensorRT ActivationType, default alpha, default beta); Affine is alpha*x + beta.
ACTIVATIONS = {
    "Relu": ("RELU", None, None), "Tanh": ("TANH", None, None), "Sigmoid": ("SIGMOID", None, None),
    "LeakyRelu": ("LEAKY_RELU", 0.01, None), "ThresholdedRelu": ("THRESHOLDED_RELU", 1.0, None),
    "ScaledTanh": ("SCALED_TANH", 1.0, 1.0), "HardSigmoid": ("HARD_SIGMOID", 0.2, 0.5),
    "Elu": ("ELU", 1.0, None), "Softsign": ("SOFTSIGN", None, None), "Softplus": ("SOFTPLUS", None, None),
    "Affine": (None, 1.0, 0.0),
}


def _names(node: ir.Node) -> list[str]:
    directions = 2 if node.attributes.get_string("direction", "forward") == "bidirectional" else 1
    names = list(node.attributes.get_strings("activations", DEFAULT_ACTIVATIONS[node.op_type] * directions))
    canonical = {n.lower(): n for n in ACTIVATIONS}
    return [canonical.get(n.lower(), n) for n in names]


def _check_recurrent(node: ir.Node) -> str | None:
    unknown = [n for n in _names(node) if n not in ACTIVATIONS]
    if unknown:
        return f"activation {unknown[0]!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
    if not node.attributes.get_int("hidden_size", 0) and not isinstance(node.inputs[R].shape[-1], int):
        return "hidden_size must be given or R's last dim static"
    return None


RECURRENT_CONSTRAINTS = [
    tensor_types(), known_rank(X), known_rank(W), known_rank(R),
    attribute_in("direction", ("forward", "reverse", "bidirectional"), "forward"),
    attribute_in("input_forget", (0,), 0),
    Constraint("supported activations and a known hidden size", _check_recurrent),
]


@converter(["RNN", "GRU", "LSTM"], since=7, constraints=RECURRENT_CONSTRAINTS)
def lower_recurrent(ctx, node):
    """RNN/GRU/LSTM (all directions, activations, clip, peepholes, sequence_lens, layout)."""
    attrs = node.attributes
    layout = attrs.get_int("layout", 0)
    hidden = attrs.get_int("hidden_size", 0) or node.inputs[R].shape[-1]
    reversed_only = attrs.get_string("direction", "forward") == "reverse"
    directions = 2 if attrs.get_string("direction", "forward") == "bidirectional" else 1
    x = ctx.tensor(node.inputs[X])
    if layout:
        x = transpose(ctx, x, (1, 0, 2))  # -> [seq, batch, input]
    cell = Cell(ctx, node, x, hidden)
    outputs = [cell.run(d, reverse=reversed_only or d == 1) for d in range(directions)]
    y = concat(ctx, [unsqueeze(ctx, out[0], 1) for out in outputs], axis=1)  # [seq, dirs, batch, hidden]
    states = [concat(ctx, [unsqueeze(ctx, out[k], 0) for out in outputs], axis=0) for k in (1, 2)
              if outputs[0][k] is not None]
    if layout:
        y = transpose(ctx, y, (2, 0, 1, 3))
        states = [transpose(ctx, s, (1, 0, 2)) for s in states]
    return [y, *states]


class Cell:
    """One op's weights and step function; `run(d)` builds the loop of direction d."""

    def __init__(self, ctx, node, x, hidden: int):
        self.ctx, self.node, self.x, self.hidden = ctx, node, x, hidden
        self.op = node.op_type
        self.gates = GATES[self.op]
        self.dtype = x.dtype
        self.clip = node.attributes.get_float("clip", 0.0)
        self.linear_before_reset = node.attributes.get_int("linear_before_reset", 0)
        self.activations = _activation_functions(node)
        self.lengths = None
        if given(node.inputs, SEQUENCE_LENS):
            self.lengths = ctx.reshape(ctx.cast(ctx.tensor(node.inputs[SEQUENCE_LENS]), ctx.trt.int64), [-1, 1])

    def _input(self, index, direction, shape):
        """Input `index` of direction `direction`, reshaped (None when absent)."""
        if not given(self.node.inputs, index):
            return None
        tensor = self.ctx.tensor(self.node.inputs[index])
        if index in (INITIAL_H, INITIAL_C) and self.node.attributes.get_int("layout", 0):
            tensor = transpose(self.ctx, tensor, (1, 0, 2))
        return self.ctx.reshape(pick(self.ctx, tensor, direction), shape)

    def run(self, direction: int, reverse: bool):
        ctx, trt, E = self.ctx, self.ctx.trt, self.ctx.trt.ElementWiseOperation
        g, h = self.gates, self.hidden
        w = self._input(W, direction, [1, g * h, -1])
        r = self._input(R, direction, [g * h, h])
        bias = self._input(B, direction, [2, g * h])
        projected = ctx.check(ctx.network.add_matrix_multiply(
            self.x, trt.MatrixOperation.NONE, w, trt.MatrixOperation.TRANSPOSE)).get_output(0)
        recurrent_bias = None
        if bias is not None:
            input_bias, recurrent_bias = pick(ctx, bias, 0), pick(ctx, bias, 1)
            if self.op == "GRU" and self.linear_before_reset:  # Rbh stays inside r * (H Rh^T + Rbh)
                keep = ctx.constant(np.repeat(np.array([1, 1, 0], np.float32), h))
                outside = ctx.elementwise(recurrent_bias, ctx.cast(keep, self.dtype), E.PROD)
                recurrent_bias = ctx.elementwise(recurrent_bias, outside, E.SUB)
                input_bias = ctx.elementwise(input_bias, outside, E.SUM)
            else:
                input_bias = ctx.elementwise(input_bias, recurrent_bias, E.SUM)
            projected = ctx.elementwise(projected, ctx.reshape(input_bias, [1, 1, -1]), E.SUM)

        loop = ctx.network.add_loop()
        steps = dim(ctx, self.x, 0)
        count = ctx.constant(np.array(steps, np.int64)) if isinstance(steps, int) else ctx.reshape(steps, [])
        ctx.check(loop.add_trip_limit(count, trt.TripLimit.COUNT))
        x_t = ctx.check(loop.add_iterator(projected, 0, reverse)).get_output(0)
        h_state = ctx.check(loop.add_recurrence(self._initial(INITIAL_H, direction)))
        c_state = ctx.check(loop.add_recurrence(self._initial(INITIAL_C, direction))) if self.op == "LSTM" else None
        h_prev = h_state.get_output(0)
        c_prev = c_state.get_output(0) if c_state is not None else None
        peepholes = self._input(P, direction, [3, h]) if self.op == "LSTM" else None
        acts = self.activations[direction]
        h_new, c_new = self.step(x_t, h_prev, c_prev, r, recurrent_bias, peepholes, acts)
        y_t = h_new
        if self.lengths is not None:
            t = ctx.check(loop.add_iterator(arange(ctx, steps), 0, reverse)).get_output(0)
            active = ctx.elementwise(ctx.reshape(t, [1, 1]), self.lengths, E.LESS)  # [batch, 1]
            y_t = select(ctx, active, h_new, scalar(ctx, 0.0, self.dtype, 2))
            h_new = select(ctx, active, h_new, h_prev)
            if c_new is not None:
                c_new = select(ctx, active, c_new, c_prev)
        h_state.set_input(1, h_new)
        if c_state is not None:
            c_state.set_input(1, c_new)
        kind = trt.LoopOutput.REVERSE if reverse else trt.LoopOutput.CONCATENATE
        y = ctx.check(loop.add_loop_output(y_t, kind, 0))
        y.set_input(1, count)
        last = [ctx.check(loop.add_loop_output(s.get_output(0), trt.LoopOutput.LAST_VALUE)).get_output(0)
                if s is not None else None for s in (h_state, c_state)]
        return y.get_output(0), last[0], last[1]

    def _initial(self, index, direction):
        state = self._input(index, direction, [-1, self.hidden])
        if state is not None:
            return state
        ctx = self.ctx  # zeros [batch, hidden] for a batch known only at run time
        batch = dim(ctx, self.x, 1)
        shape = concat(ctx, [ctx.constant(np.array([batch], np.int64)) if isinstance(batch, int) else batch,
                             ctx.constant(np.array([self.hidden], np.int64))], axis=0)
        layer = ctx.check(ctx.network.add_fill((0, 0), ctx.trt.FillOperation.LINSPACE, ctx.trt.float32))
        layer.set_input(0, shape)
        layer.set_input(1, ctx.constant(np.zeros((), np.float32)))
        layer.set_input(2, ctx.constant(np.zeros(2, np.float32)))
        return ctx.cast(layer.get_output(0), self.dtype)

    def act(self, function, value):
        if self.clip > 0:
            E = self.ctx.trt.ElementWiseOperation
            value = self.ctx.elementwise(value, scalar(self.ctx, -self.clip, self.dtype, 2), E.MAX)
            value = self.ctx.elementwise(value, scalar(self.ctx, self.clip, self.dtype, 2), E.MIN)
        return function(self.ctx, value)

    def step(self, x_t, h_prev, c_prev, r, recurrent_bias, peepholes, acts):
        """One time step: (new H, new C or None)."""
        ctx, E, MO = self.ctx, self.ctx.trt.ElementWiseOperation, self.ctx.trt.MatrixOperation
        hr = ctx.check(ctx.network.add_matrix_multiply(h_prev, MO.NONE, r, MO.TRANSPOSE)).get_output(0)
        if self.op == "RNN":
            return self.act(acts[0], ctx.elementwise(x_t, hr, E.SUM)), None
        xs, hs = split_gates(ctx, x_t, self.gates, self.hidden), split_gates(ctx, hr, self.gates, self.hidden)
        f, g = acts[0], acts[1]
        if self.op == "GRU":
            z = self.act(f, ctx.elementwise(xs[0], hs[0], E.SUM))
            reset = self.act(f, ctx.elementwise(xs[1], hs[1], E.SUM))
            if self.linear_before_reset:
                inner = hs[2] if recurrent_bias is None else ctx.elementwise(
                    hs[2], ctx.reshape(pick(ctx, ctx.reshape(recurrent_bias, [3, -1]), 2), [1, -1]), E.SUM)
                candidate = ctx.elementwise(reset, inner, E.PROD)
            else:
                r_h = pick(ctx, ctx.reshape(r, [3, self.hidden, self.hidden]), 2)
                candidate = ctx.check(ctx.network.add_matrix_multiply(
                    ctx.elementwise(reset, h_prev, E.PROD), MO.NONE, r_h, MO.TRANSPOSE)).get_output(0)
            candidate = self.act(g, ctx.elementwise(xs[2], candidate, E.SUM))
            one = scalar(ctx, 1.0, self.dtype, 2)
            keep = ctx.elementwise(ctx.elementwise(one, z, E.SUB), candidate, E.PROD)
            return ctx.elementwise(keep, ctx.elementwise(z, h_prev, E.PROD), E.SUM), None
        pre = [ctx.elementwise(a, b, E.SUM) for a, b in zip(xs, hs, strict=True)]  # i, o, f, c
        peep = [None] * 3 if peepholes is None else [ctx.reshape(pick(ctx, peepholes, k), [1, -1]) for k in range(3)]

        def gate(value, index, cell):
            if peep[index] is not None:
                value = ctx.elementwise(value, ctx.elementwise(peep[index], cell, E.PROD), E.SUM)
            return self.act(f, value)

        i = gate(pre[0], 0, c_prev)
        forget = gate(pre[2], 2, c_prev)
        c_new = ctx.elementwise(ctx.elementwise(forget, c_prev, E.PROD),
                                ctx.elementwise(i, self.act(g, pre[3]), E.PROD), E.SUM)
        o = gate(pre[1], 1, c_new)
        return ctx.elementwise(o, self.act(acts[2], c_new), E.PROD), c_new


def _activation_functions(node: ir.Node):
    """Per direction, the op's activations as fn(ctx, x) with alpha/beta consumed in order."""
    alphas = list(node.attributes.get_floats("activation_alpha", []))
    betas = list(node.attributes.get_floats("activation_beta", []))
    per_direction = len(DEFAULT_ACTIVATIONS[node.op_type])
    functions = []
    for name in _names(node):
        kind, alpha, beta = ACTIVATIONS[name]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        functions.append(_activation(kind, alpha, beta))
    return [functions[i:i + per_direction] for i in range(0, len(functions), per_direction)]


def _activation(kind, alpha, beta):
    def apply(ctx, x):
        if kind is None:  # Affine
            E = ctx.trt.ElementWiseOperation
            scaled = ctx.elementwise(x, scalar(ctx, alpha, x.dtype, ctx.rank(x)), E.PROD)
            return ctx.elementwise(scaled, scalar(ctx, beta, x.dtype, ctx.rank(x)), E.SUM)
        layer = ctx.check(ctx.network.add_activation(x, getattr(ctx.trt.ActivationType, kind)))
        if kind == "SOFTPLUS":
            layer.alpha, layer.beta = 1.0, 1.0
        if alpha is not None:
            layer.alpha = alpha
        if beta is not None:
            layer.beta = beta
        return layer.get_output(0)

    return apply


# ------------------------------------------------------------------ helpers


def pick(ctx, tensor, index: int, axis: int = 0):
    """tensor[index] along `axis` (the axis is dropped)."""
    indices = ctx.constant(np.array(index, np.int32))
    return ctx.check(ctx.network.add_gather(tensor, indices, axis)).get_output(0)


def split_gates(ctx, tensor, gates: int, hidden: int):
    """[batch, gates*hidden] -> gates tensors [batch, hidden] (batch may be dynamic)."""
    stacked = ctx.reshape(tensor, [0, gates, hidden])
    return [pick(ctx, stacked, k, axis=1) for k in range(gates)]


def transpose(ctx, tensor, perm):
    layer = ctx.check(ctx.network.add_shuffle(tensor))
    layer.first_transpose = tuple(perm)
    return layer.get_output(0)


def unsqueeze(ctx, tensor, axis: int):
    axes = ctx.constant(np.array([axis], np.int64))
    return ctx.check(ctx.network.add_unsqueeze(tensor, axes)).get_output(0)
