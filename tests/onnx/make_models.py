#!/usr/bin/env python3
"""Writes the ONNX test models of tests/onnx_import.rs and their expected outputs.

Each model is built with onnx.helper from seeded random weights, checked with
onnx.checker, and run with onnxruntime (the independent reference) on a fixed seeded
input. For each MODEL this writes, next to this script:

  MODEL.onnx                  the model
  MODEL.inputs.safetensors    its inputs, by graph input name (what `gradlift run
                              --inputs` reads)
  MODEL.expected.safetensors  onnxruntime's outputs, by graph output name

The safetensors files are written by the small writer below (F32 tensors, sorted keys),
so the only requirements are onnx, onnxruntime and numpy:

  python3 -m venv venv && venv/bin/pip install onnx onnxruntime numpy
  venv/bin/python tests/onnx/make_models.py
"""

import json
import os
import struct

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 13


def write_safetensors(path, tensors):
    """Minimal safetensors writer: F32 tensors, keys sorted, header padded to 8 bytes."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")  # bools as 0.0 and 1.0
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def init(rng, name, shape, scale=0.5):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def save(name, graph, feeds, opset=OPSET):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="make_models.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(HERE, name + ".onnx")
    onnx.save(model, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    write_safetensors(os.path.join(HERE, name + ".inputs.safetensors"), feeds)
    write_safetensors(os.path.join(HERE, name + ".expected.safetensors"), dict(zip(names, outs)))
    print(name, {k: v.shape for k, v in zip(names, outs)})


def mlp():
    """Gemm (transB, as PyTorch exports Linear) + Relu + Gemm + Softmax, batch 2."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [2, 4])],
        [init(rng, "fc1.weight", [16, 8]), init(rng, "fc1.bias", [16]), init(rng, "fc2.weight", [4, 16]), init(rng, "fc2.bias", [4])],
    )
    save("mlp", g, {"x": rng.standard_normal([2, 8]).astype(np.float32)})


def cnn():
    """NCHW CNN with a symbolic batch: Conv (pads 1, same) + Relu + MaxPool 2x2, Conv with
    asymmetric pads + a [C,1,1] bias Add + Relu, AveragePool 2x2 stride 1, Flatten (C,H,W
    order), Gemm, LogSoftmax."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[0, 0, 1, 1]),
        helper.make_node("Add", ["c2", "conv2.shift"], ["c2b"], name="shift"),
        helper.make_node("Relu", ["c2b"], ["r2"], name="relu2"),
        helper.make_node("AveragePool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], name="log_softmax", axis=1),
    ]
    g = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 10, 10])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["N", 3])],
        [
            init(rng, "conv1.weight", [4, 1, 3, 3]),
            init(rng, "conv1.bias", [4]),
            init(rng, "conv2.weight", [6, 4, 3, 3], 0.3),
            init(rng, "conv2.shift", [6, 1, 1]),
            init(rng, "fc.weight", [3, 54], 0.3),
            init(rng, "fc.bias", [3]),
        ],
    )
    save("cnn", g, {"x": rng.standard_normal([2, 1, 10, 10]).astype(np.float32)})


def ops():
    """The other operators on 2-D values: Transpose, MatMul, Concat, Slice, Reshape,
    ReduceMean, ReduceSum, Exp, Log, Sub, Mul, Div, Sigmoid, Tanh, Gemm with alpha, beta and
    transA, LeakyRelu, Clip, Max, Min, Pow, Sqrt, Abs, Neg, Softmax on axis 0, and the shape
    arithmetic PyTorch writes for x.view(x.size(0), -1): Shape, Gather, Unsqueeze, Concat."""
    rng = np.random.default_rng(3)
    n = helper.make_node
    nodes = [
        n("Transpose", ["x"], ["xt"], name="transpose", perm=[1, 0]),
        n("MatMul", ["xt", "w"], ["mm"], name="matmul"),  # [4,3] x [3,5]
        n("Concat", ["x", "y"], ["cat"], name="concat", axis=1),  # [3,8]
        n("Slice", ["cat", "starts", "ends", "axes"], ["sl"], name="slice"),  # [3,6]
        n("Reshape", ["sl", "shape3"], ["r3"], name="reshape"),  # [3,2,3]
        n("ReduceMean", ["r3"], ["rm"], name="reduce_mean", axes=[1], keepdims=0),  # [3,3]
        n("ReduceSum", ["r3", "axes2"], ["rs"], name="reduce_sum", keepdims=1),  # [3,2,1]
        n("Exp", ["rm"], ["ex"], name="exp"),
        n("Add", ["ex", "one"], ["ex1"], name="add_one"),
        n("Log", ["ex1"], ["lg"], name="log"),
        n("Sigmoid", ["x"], ["sg"], name="sigmoid"),
        n("Tanh", ["y"], ["th"], name="tanh"),
        n("Sub", ["sg", "th"], ["sb"], name="sub"),
        n("Mul", ["sb", "x"], ["ml"], name="mul"),
        n("Abs", ["y"], ["ab"], name="abs"),
        n("Add", ["ab", "one"], ["ab1"], name="add_abs"),
        n("Sqrt", ["ab1"], ["sq"], name="sqrt"),
        n("Div", ["ml", "sq"], ["dv"], name="div"),
        n("Gemm", ["x", "gb", "gc"], ["gm"], name="gemm", alpha=0.5, beta=2.0, transA=1),  # x^T [4,3] x [3,2]
        n("LeakyRelu", ["gm"], ["lr"], name="leaky_relu", alpha=0.1),
        n("Clip", ["y", "lo", "hi"], ["cl"], name="clip"),
        n("Max", ["x", "y", "cl"], ["mx"], name="max"),
        n("Min", ["x", "y"], ["mn"], name="min"),
        n("Neg", ["mn"], ["ng"], name="neg"),
        n("Pow", ["ng", "two"], ["pw"], name="pow"),
        n("Softmax", ["mx"], ["sm0"], name="softmax0", axis=0),
        n("Shape", ["r3"], ["shp"], name="shape"),
        n("Gather", ["shp", "zero"], ["b0"], name="gather", axis=0),
        n("Unsqueeze", ["b0", "axes0"], ["b1"], name="unsqueeze"),
        n("Concat", ["b1", "minus_one"], ["flat_shape"], name="concat_shape", axis=0),
        n("Reshape", ["r3", "flat_shape"], ["flat"], name="flatten_view"),
    ]
    outs = [("mm", [4, 5]), ("lg", [3, 3]), ("rs", [3, 2, 1]), ("dv", [3, 4]), ("lr", [4, 2]), ("pw", [3, 4]), ("sm0", [3, 4]), ("flat", [3, 6])]
    g = helper.make_graph(
        nodes,
        "ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]), helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outs],
        [
            init(rng, "w", [3, 5]),
            init(rng, "gb", [3, 2]),
            init(rng, "gc", [2]),
            ints("starts", [1]),
            ints("ends", [7]),
            ints("axes", [1]),
            ints("shape3", [3, 2, 3]),
            ints("axes2", [2]),
            ints("axes0", [0]),
            ints("zero", 0),
            ints("minus_one", [-1]),
        ],
    )
    g.node.insert(0, n("Constant", [], ["one"], name="const_one", value_float=1.0))
    g.node.insert(0, n("Constant", [], ["two"], name="const_two", value=numpy_helper.from_array(np.array(2.0, np.float32))))
    g.node.insert(0, n("Constant", [], ["lo"], name="const_lo", value_float=-0.5))
    g.node.insert(0, n("Constant", [], ["hi"], name="const_hi", value_float=0.75))
    save("ops", g, {"x": rng.standard_normal([3, 4]).astype(np.float32), "y": rng.standard_normal([3, 4]).astype(np.float32)})


def spatial():
    """NCHW window ops: Conv with stride 2 and SAME_LOWER, BatchNormalization, MaxPool with
    pads and ceil_mode, AveragePool with pads (count_include_pad 0), channel Concat,
    GlobalAveragePool, Sigmoid, and 4-D outputs (returned NCHW)."""
    rng = np.random.default_rng(4)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="conv_same_lower", strides=[2, 2], auto_pad="SAME_LOWER", kernel_shape=[3, 3]),
        n("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"], name="bn", epsilon=1e-3),
        n("Relu", ["bn"], ["r"], name="relu"),
        n("MaxPool", ["r"], ["mp"], name="max_pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        n("AveragePool", ["r"], ["ap"], name="avg_pool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        n("Concat", ["r", "ap"], ["cat"], name="concat", axis=1),
        n("Sigmoid", ["cat"], ["sg"], name="sigmoid"),
        n("GlobalAveragePool", ["sg"], ["gap"], name="gap"),
        n("Flatten", ["gap"], ["flat"], name="flatten"),
    ]
    g = helper.make_graph(
        nodes,
        "spatial",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 7, 7])],
        [
            helper.make_tensor_value_info("mp", TensorProto.FLOAT, [2, 4, 3, 3]),
            helper.make_tensor_value_info("cat", TensorProto.FLOAT, [2, 8, 4, 4]),
            helper.make_tensor_value_info("flat", TensorProto.FLOAT, [2, 8]),
        ],
        [
            init(rng, "w1", [4, 3, 3, 3]),
            init(rng, "b1", [4]),
            init(rng, "bn.scale", [4]),
            init(rng, "bn.bias", [4]),
            init(rng, "bn.mean", [4], 0.1),
            numpy_helper.from_array((rng.random(4) + 0.5).astype(np.float32), "bn.var"),
        ],
    )
    save("spatial", g, {"x": rng.standard_normal([2, 3, 7, 7]).astype(np.float32)})


def opset18():
    """Operator set 18, where reduction axes are operands: ReduceMean, ReduceMax and
    ReduceSum with axes operands, Squeeze and Unsqueeze with axes operands, Softmax on its
    default (last) axis, Conv with SAME_UPPER and stride 2 (gradlift's `same`), MaxPool with
    SAME_UPPER, AveragePool with count_include_pad 1, GlobalMaxPool, Identity and Dropout
    (inference) of a weight used twice, Cast to float, Erf."""
    rng = np.random.default_rng(5)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c"], name="conv_same", strides=[2, 2], auto_pad="SAME_UPPER"),  # [2,3,4,4]
        n("MaxPool", ["c"], ["mp"], name="max_pool_same", kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),  # [2,3,2,2]
        n("AveragePool", ["c"], ["ap"], name="avg_pool_incl", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),  # [2,3,4,4]
        n("GlobalMaxPool", ["ap"], ["gmp"], name="global_max"),  # [2,3,1,1]
        n("Squeeze", ["gmp", "axes23"], ["sq"], name="squeeze"),  # [2,3]
        n("Softmax", ["sq"], ["sm"], name="softmax"),
        n("ReduceMean", ["mp", "axes23"], ["rm"], name="reduce_mean", keepdims=0),  # [2,3]
        n("ReduceMax", ["mp", "axes1"], ["rx"], name="reduce_max"),  # [2,1,2,2]
        n("ReduceSum", ["rx", "axes1"], ["rs"], name="reduce_sum", keepdims=0),  # [2,2,2]
        n("Unsqueeze", ["rs", "axes0"], ["us"], name="unsqueeze"),  # [1,2,2,2]
        n("Erf", ["us"], ["er"], name="erf"),
        n("Identity", ["v"], ["v_id"], name="identity"),
        n("Dropout", ["v"], ["v_do"], name="dropout"),
        n("MatMul", ["rm", "v_id"], ["m1"], name="matmul1"),  # [2,3] x [3,3]
        n("MatMul", ["sm", "v_do"], ["m2"], name="matmul2"),
        n("Add", ["m1", "m2"], ["mm"], name="add"),
        n("Cast", ["mm"], ["out"], name="cast", to=TensorProto.FLOAT),
    ]
    g = helper.make_graph(
        nodes,
        "opset18",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 8, 7])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("er", TensorProto.FLOAT, [1, 2, 2, 2]),
            helper.make_tensor_value_info("ap", TensorProto.FLOAT, [2, 3, 4, 4]),
        ],
        [init(rng, "w", [3, 2, 3, 3]), init(rng, "v", [3, 3]), ints("axes23", [2, 3]), ints("axes1", [1]), ints("axes0", [0])],
    )
    save("opset18", g, {"x": rng.standard_normal([2, 2, 8, 7]).astype(np.float32)}, opset=18)


def opset11():
    """Operator set 11: Softmax and LogSoftmax see a 4-D input as 2-D from their axis,
    Squeeze, Unsqueeze and ReduceSum take axes attributes, Slice with negative bounds and
    steps of 1, Clip with bound operands, Concat of NHWC values on the channel axis,
    Transpose of an NHWC value."""
    rng = np.random.default_rng(6)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),  # [2,2,3,3]
        n("Softmax", ["c"], ["sm"], name="softmax_coerced", axis=1),
        n("LogSoftmax", ["c"], ["lsm"], name="log_softmax_coerced", axis=2),
        n("Concat", ["c", "sm"], ["cat"], name="concat_channels", axis=1),  # [2,4,3,3]
        n("Transpose", ["cat"], ["tr"], name="transpose", perm=[0, 2, 3, 1]),  # [2,3,3,4]
        n("Slice", ["tr", "starts", "ends", "axes", "steps"], ["sl"], name="slice"),  # [2,3,2,2]
        n("ReduceSum", ["sl"], ["rs"], name="reduce_sum", axes=[1], keepdims=1),  # [2,1,2,2]
        n("Squeeze", ["rs"], ["sq"], name="squeeze", axes=[1]),  # [2,2,2]
        n("Unsqueeze", ["sq"], ["us"], name="unsqueeze", axes=[0]),  # [1,2,2,2]
        n("Clip", ["us", "lo", ""], ["cl"], name="clip_low"),
    ]
    g = helper.make_graph(
        nodes,
        "opset11",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3, 3])],
        [
            helper.make_tensor_value_info("cl", TensorProto.FLOAT, [1, 2, 2, 2]),
            helper.make_tensor_value_info("lsm", TensorProto.FLOAT, [2, 2, 3, 3]),
        ],
        [
            init(rng, "w", [2, 3, 3, 3]),
            ints("starts", [-2, 1]),
            ints("ends", [100, -1]),
            ints("axes", [2, 3]),
            ints("steps", [1, 1]),
            numpy_helper.from_array(np.array(-0.25, np.float32), "lo"),
        ],
    )
    save("opset11", g, {"x": rng.standard_normal([2, 3, 3, 3]).astype(np.float32)}, opset=11)


def pytorch_style():
    """A CNN written the way torch.onnx.export writes one (opset 17): value and node names
    with slashes and colons (`/conv1/Conv_output_0`, `onnx::Conv_7`), the input `input.1`
    with a symbolic batch, BatchNormalization in inference mode, and `x.view(x.size(0), -1)`
    as Shape, Gather, Unsqueeze, Concat with a Constant, Reshape."""
    rng = np.random.default_rng(7)
    n = helper.make_node
    nodes = [
        n("Conv", ["input.1", "onnx::Conv_7", "onnx::Conv_8"], ["/conv1/Conv_output_0"], name="/conv1/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
        n("BatchNormalization", ["/conv1/Conv_output_0", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"], ["/bn1/BatchNormalization_output_0"], name="/bn1/BatchNormalization", epsilon=1e-5, momentum=0.9),
        n("Relu", ["/bn1/BatchNormalization_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        n("MaxPool", ["/relu/Relu_output_0"], ["/pool/MaxPool_output_0"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0),
        n("Shape", ["/pool/MaxPool_output_0"], ["/Shape_output_0"], name="/Shape"),
        n("Constant", [], ["/Constant_output_0"], name="/Constant", value=numpy_helper.from_array(np.array(0, np.int64))),
        n("Gather", ["/Shape_output_0", "/Constant_output_0"], ["/Gather_output_0"], name="/Gather", axis=0),
        n("Constant", [], ["onnx::Unsqueeze_15"], name="Constant_9", value=numpy_helper.from_array(np.array([0], np.int64))),
        n("Unsqueeze", ["/Gather_output_0", "onnx::Unsqueeze_15"], ["/Unsqueeze_output_0"], name="/Unsqueeze"),
        n("Constant", [], ["/Constant_1_output_0"], name="/Constant_1", value=numpy_helper.from_array(np.array([-1], np.int64))),
        n("Concat", ["/Unsqueeze_output_0", "/Constant_1_output_0"], ["/Concat_output_0"], name="/Concat", axis=0),
        n("Reshape", ["/pool/MaxPool_output_0", "/Concat_output_0"], ["/Reshape_output_0"], name="/Reshape", allowzero=0),
        n("Gemm", ["/Reshape_output_0", "fc.weight", "fc.bias"], ["output"], name="/fc/Gemm", alpha=1.0, beta=1.0, transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch_size", 3, 6, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", 5])],
        [
            init(rng, "onnx::Conv_7", [4, 3, 3, 3]),
            init(rng, "onnx::Conv_8", [4]),
            init(rng, "bn1.weight", [4]),
            init(rng, "bn1.bias", [4]),
            init(rng, "bn1.running_mean", [4], 0.1),
            numpy_helper.from_array((rng.random(4) + 0.5).astype(np.float32), "bn1.running_var"),
            init(rng, "fc.weight", [5, 36], 0.3),
            init(rng, "fc.bias", [5]),
        ],
    )
    save("pytorch_style", g, {"input.1": rng.standard_normal([2, 3, 6, 6]).astype(np.float32)}, opset=17)


def keras_style():
    """A CNN written the way tf2onnx writes a Keras model: an NHWC input transposed to NCHW
    for the Conv and back, Dense layers as MatMul + Add, a Reshape with a constant shape,
    names with colons and slashes."""
    rng = np.random.default_rng(8)
    n = helper.make_node
    nodes = [
        n("Transpose", ["input_1"], ["sequential/conv2d/Conv2D__6:0"], name="sequential/conv2d/Conv2D__6", perm=[0, 3, 1, 2]),
        n("Conv", ["sequential/conv2d/Conv2D__6:0", "sequential/conv2d/Conv2D/ReadVariableOp:0", "sequential/conv2d/BiasAdd/ReadVariableOp:0"], ["sequential/conv2d/BiasAdd:0"], name="sequential/conv2d/BiasAdd", kernel_shape=[3, 3], strides=[1, 1], dilations=[1, 1], group=1, auto_pad="VALID"),
        n("Relu", ["sequential/conv2d/BiasAdd:0"], ["sequential/conv2d/Relu:0"], name="sequential/conv2d/Relu"),
        n("Transpose", ["sequential/conv2d/Relu:0"], ["sequential/conv2d/Relu__8:0"], name="sequential/conv2d/Relu__8", perm=[0, 2, 3, 1]),
        n("Reshape", ["sequential/conv2d/Relu__8:0", "const_fold_opt__11"], ["sequential/flatten/Reshape:0"], name="sequential/flatten/Reshape"),
        n("MatMul", ["sequential/flatten/Reshape:0", "sequential/dense/MatMul/ReadVariableOp:0"], ["sequential/dense/MatMul:0"], name="sequential/dense/MatMul"),
        n("Add", ["sequential/dense/MatMul:0", "sequential/dense/BiasAdd/ReadVariableOp:0"], ["sequential/dense/BiasAdd:0"], name="sequential/dense/BiasAdd"),
        n("Softmax", ["sequential/dense/BiasAdd:0"], ["dense"], name="sequential/dense/Softmax", axis=-1),
    ]
    g = helper.make_graph(
        nodes,
        "tf2onnx",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__12", 5, 5, 2])],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__13", 3])],
        [
            init(rng, "sequential/conv2d/Conv2D/ReadVariableOp:0", [4, 2, 3, 3]),
            init(rng, "sequential/conv2d/BiasAdd/ReadVariableOp:0", [4]),
            ints("const_fold_opt__11", [-1, 36]),
            init(rng, "sequential/dense/MatMul/ReadVariableOp:0", [36, 3], 0.3),
            init(rng, "sequential/dense/BiasAdd/ReadVariableOp:0", [3]),
        ],
    )
    save("keras_style", g, {"input_1": rng.standard_normal([2, 5, 5, 2]).astype(np.float32)}, opset=13)


def opset20():
    """Operator set 20: Pad (constant) on a 2-D value and on an NHWC value between a Conv and
    a MaxPool, Sum, Mean, Elu, Softplus, Reciprocal, HardSigmoid, Gelu (exact and tanh),
    Expand, Split, LayerNormalization, ReduceMin."""
    rng = np.random.default_rng(9)
    n = helper.make_node
    nodes = [
        n("Conv", ["img", "w"], ["c"], name="conv"),  # [2,2,4,4]
        n("Pad", ["c", "pads4", "pad_value"], ["cp"], name="pad_nhwc", mode="constant"),  # [2,2,5,6]
        n("MaxPool", ["cp"], ["mp"], name="max_pool", kernel_shape=[2, 2], strides=[1, 2]),  # [2,2,4,3]
        n("Pad", ["x", "pads2"], ["xp"], name="pad"),  # [3,6]
        n("Split", ["xp", "split"], ["s1", "s2"], name="split", axis=1),  # [3,2], [3,4]
        n("Elu", ["s2"], ["el"], name="elu", alpha=0.7),
        n("Softplus", ["el"], ["sp"], name="softplus"),
        n("HardSigmoid", ["x"], ["hs"], name="hard_sigmoid", alpha=0.3, beta=0.4),
        n("Gelu", ["x"], ["ge"], name="gelu"),
        n("Gelu", ["x"], ["gt"], name="gelu_tanh", approximate="tanh"),
        n("Sum", ["hs", "ge", "gt"], ["sm"], name="sum"),
        n("Mean", ["sp", "sm"], ["mn"], name="mean"),
        n("Abs", ["mn"], ["ab"], name="abs"),
        n("Add", ["ab", "one"], ["ab1"], name="add_one"),
        n("Reciprocal", ["ab1"], ["rc"], name="reciprocal"),
        n("LayerNormalization", ["rc", "ln.scale", "ln.bias"], ["ln"], name="layer_norm", axis=-1, epsilon=1e-3),
        n("Expand", ["s1", "expand_shape"], ["ex"], name="expand"),  # [2,3,2]
        n("ReduceMin", ["ex", "axes0"], ["rmin"], name="reduce_min", keepdims=0),  # [3,2]
    ]
    g = helper.make_graph(
        nodes,
        "opset20",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]), helper.make_tensor_value_info("img", TensorProto.FLOAT, [2, 3, 5, 5])],
        [
            helper.make_tensor_value_info("mp", TensorProto.FLOAT, [2, 2, 4, 3]),
            helper.make_tensor_value_info("ln", TensorProto.FLOAT, [3, 4]),
            helper.make_tensor_value_info("rmin", TensorProto.FLOAT, [3, 2]),
        ],
        [
            init(rng, "w", [2, 3, 2, 2]),
            ints("pads4", [0, 0, 1, 0, 0, 0, 0, 2]),
            numpy_helper.from_array(np.array(-0.5, np.float32), "pad_value"),
            ints("pads2", [0, 1, 0, 1]),
            ints("split", [2, 4]),
            init(rng, "ln.scale", [4]),
            init(rng, "ln.bias", [4]),
            ints("expand_shape", [2, 1, 1]),
            ints("axes0", [0]),
        ],
    )
    g.node.insert(0, n("Constant", [], ["one"], name="const_one", value_float=1.0))
    save(
        "opset20",
        g,
        {"x": rng.standard_normal([3, 4]).astype(np.float32), "img": rng.standard_normal([2, 3, 5, 5]).astype(np.float32)},
        opset=20,
    )


def batched_matmul():
    """MatMul with batch axes (as attention computes): [2,3,4] x [2,4,5], a 2-D A times a
    batched B, broadcast batch axes [3,1] x [2], a 1-D A times a batched B."""
    rng = np.random.default_rng(10)
    n = helper.make_node
    nodes = [
        n("MatMul", ["a", "b"], ["ab"], name="batched"),  # [2,3,5]
        n("MatMul", ["w", "b"], ["wb"], name="shared_a"),  # [3,4] x [2,4,5] -> [2,3,5]
        n("MatMul", ["c", "d"], ["cd"], name="broadcast_batch"),  # [3,1,2,4] x [2,4,2] -> [3,2,2,2]
        n("MatMul", ["v", "b"], ["vb"], name="vector_a"),  # [4] x [2,4,5] -> [2,5]
    ]
    g = helper.make_graph(
        nodes,
        "batched_matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 4, 5]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [3, 1, 2, 4]),
        ],
        [
            helper.make_tensor_value_info("ab", TensorProto.FLOAT, [2, 3, 5]),
            helper.make_tensor_value_info("wb", TensorProto.FLOAT, [2, 3, 5]),
            helper.make_tensor_value_info("cd", TensorProto.FLOAT, [3, 2, 2, 2]),
            helper.make_tensor_value_info("vb", TensorProto.FLOAT, [2, 5]),
        ],
        [init(rng, "w", [3, 4]), init(rng, "d", [2, 4, 2]), init(rng, "v", [4])],
    )
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in [("a", [2, 3, 4]), ("b", [2, 4, 5]), ("c", [3, 1, 2, 4])]}
    save("batched_matmul", g, feeds)


def conv_transpose():
    """ConvTranspose (a decoder's upsampling): stride 2 with pads and output_padding and a
    bias, then stride 1 without pads; NCHW in and out."""
    rng = np.random.default_rng(11)
    n = helper.make_node
    nodes = [
        n("ConvTranspose", ["x", "w1", "b1"], ["u1"], name="up1", strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),  # [2,2,8,8]
        n("Relu", ["u1"], ["r1"], name="relu"),
        n("ConvTranspose", ["r1", "w2"], ["u2"], name="up2", kernel_shape=[2, 3]),  # [2,1,9,10]
    ]
    g = helper.make_graph(
        nodes,
        "conv_transpose",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("u2", TensorProto.FLOAT, [2, 1, 9, 10])],
        [init(rng, "w1", [3, 2, 3, 3]), init(rng, "b1", [2]), init(rng, "w2", [2, 1, 2, 3])],
    )
    save("conv_transpose", g, {"x": rng.standard_normal([2, 3, 4, 4]).astype(np.float32)})


def logic():
    """Comparisons and bools (f32 masks in gradlift): Greater, Less, Equal, GreaterOrEqual,
    LessOrEqual, Not, And, Or, Xor, Where (with a bool initializer mask and a -inf-like
    fill, as attention masking writes), Cast between bool and float, and a bool output."""
    rng = np.random.default_rng(12)
    n = helper.make_node
    nodes = [
        n("Greater", ["x", "y"], ["gt"], name="greater"),
        n("Less", ["x", "zero"], ["lt"], name="less"),
        n("Or", ["gt", "lt"], ["either"], name="or"),
        n("Not", ["either"], ["neither"], name="not"),
        n("GreaterOrEqual", ["x", "y"], ["ge"], name="ge"),
        n("LessOrEqual", ["x", "y"], ["le"], name="le"),
        n("And", ["ge", "le"], ["eq_via"], name="and"),
        n("Xor", ["ge", "mask"], ["xr"], name="xor"),
        n("Where", ["mask", "x", "fill"], ["masked"], name="where_mask"),
        n("Softmax", ["masked"], ["attn"], name="softmax", axis=-1),
        n("Where", ["gt", "x", "y"], ["mx"], name="where_max"),
        n("Cast", ["neither"], ["neither_f"], name="cast_float", to=TensorProto.FLOAT),
        n("Cast", ["mx"], ["mx_b"], name="cast_bool", to=TensorProto.BOOL),
        n("Equal", ["mx_b", "xr"], ["same"], name="equal"),
        n("Cast", ["same"], ["same_f"], name="cast_same", to=TensorProto.FLOAT),
        n("Add", ["neither_f", "same_f"], ["count"], name="add"),
    ]
    g = helper.make_graph(
        nodes,
        "logic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]), helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [
            helper.make_tensor_value_info("attn", TensorProto.FLOAT, [3, 4]),
            helper.make_tensor_value_info("mx", TensorProto.FLOAT, [3, 4]),
            helper.make_tensor_value_info("count", TensorProto.FLOAT, [3, 4]),
            helper.make_tensor_value_info("eq_via", TensorProto.BOOL, [3, 4]),
        ],
        [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(-1e9, np.float32), "fill"),
            numpy_helper.from_array(np.tril(np.ones([3, 4], bool)), "mask"),
        ],
    )
    x = rng.standard_normal([3, 4]).astype(np.float32)
    y = rng.standard_normal([3, 4]).astype(np.float32)
    y[0, 1] = x[0, 1]  # one tie, so Equal and the or-equal comparisons see one
    save("logic", g, {"x": x, "y": y})


def resnet_block():
    """A residual block as torchvision's ResNets export it: Conv (no bias) + BatchNorm + Relu,
    Conv + BatchNorm, the residual Add of two NHWC values, Relu, a strided 1x1 Conv
    shortcut, GlobalAveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(13)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "stem.w"], ["s"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Relu", ["s"], ["s1"], name="stem_relu"),
        n("Conv", ["s1", "c1.w"], ["a"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        n("BatchNormalization", ["a", "bn1.g", "bn1.b", "bn1.m", "bn1.v"], ["a1"], name="bn1"),
        n("Relu", ["a1"], ["a2"], name="relu1"),
        n("Conv", ["a2", "c2.w"], ["b"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["b", "bn2.g", "bn2.b", "bn2.m", "bn2.v"], ["b1"], name="bn2"),
        n("Conv", ["s1", "down.w"], ["d"], name="downsample", kernel_shape=[1, 1], strides=[2, 2]),
        n("Add", ["b1", "d"], ["sum"], name="residual"),
        n("Relu", ["sum"], ["r"], name="relu2"),
        n("GlobalAveragePool", ["r"], ["gap"], name="avgpool"),
        n("Flatten", ["gap"], ["f"], name="flatten"),
        n("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    bn = lambda p, c: [init(rng, p + ".g", [c]), init(rng, p + ".b", [c]), init(rng, p + ".m", [c], 0.1), numpy_helper.from_array((rng.random(c) + 0.5).astype(np.float32), p + ".v")]
    g = helper.make_graph(
        nodes,
        "resnet_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [init(rng, "stem.w", [4, 3, 3, 3]), init(rng, "c1.w", [6, 4, 3, 3], 0.3), init(rng, "c2.w", [6, 6, 3, 3], 0.3), init(rng, "down.w", [6, 4, 1, 1])]
        + bn("bn1", 6)
        + bn("bn2", 6)
        + [init(rng, "fc.w", [4, 6]), init(rng, "fc.b", [4])],
    )
    save("resnet_block", g, {"x": rng.standard_normal([2, 3, 8, 8]).astype(np.float32)})


def grouped_conv():
    """Grouped and depthwise convolutions (MobileNet's): Conv with group 2, a depthwise Conv
    (group = channels) with stride 2 and pads, then a pointwise 1x1 Conv."""
    rng = np.random.default_rng(14)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "g.w", "g.b"], ["g"], name="grouped", group=2, pads=[1, 1, 1, 1]),  # [2,6,6,6]
        n("Relu", ["g"], ["r"], name="relu"),
        n("Conv", ["r", "dw.w"], ["dw"], name="depthwise", group=6, strides=[2, 2], pads=[1, 1, 1, 1]),  # [2,6,3,3]
        n("Conv", ["dw", "pw.w", "pw.b"], ["y"], name="pointwise"),  # [2,5,3,3]
    ]
    g = helper.make_graph(
        nodes,
        "grouped_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 3, 3])],
        [init(rng, "g.w", [6, 2, 3, 3]), init(rng, "g.b", [6]), init(rng, "dw.w", [6, 1, 3, 3]), init(rng, "pw.w", [5, 6, 1, 1]), init(rng, "pw.b", [5])],
    )
    save("grouped_conv", g, {"x": rng.standard_normal([2, 4, 6, 6]).astype(np.float32)})


def dilated_conv():
    """Dilated convolutions (DeepLab's): dilation 2 with pads 2 (gradlift's `same` on the
    dilated kernel), dilation [3, 1] with stride [2, 1] and no pads, and a grouped dilated
    Conv."""
    rng = np.random.default_rng(15)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="dilated_same", dilations=[2, 2], pads=[2, 2, 2, 2]),  # [2,4,9,9]
        n("Relu", ["c1"], ["r1"], name="relu"),
        n("Conv", ["r1", "w2"], ["c2"], name="dilated_strided", dilations=[3, 1], strides=[2, 1]),  # [2,2,3,7]
        n("Conv", ["r1", "w3"], ["c3"], name="dilated_grouped", dilations=[2, 2], group=2),  # [2,4,5,5]
    ]
    g = helper.make_graph(
        nodes,
        "dilated_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 9])],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [2, 2, 3, 7]), helper.make_tensor_value_info("c3", TensorProto.FLOAT, [2, 4, 5, 5])],
        [init(rng, "w1", [4, 3, 3, 3]), init(rng, "b1", [4]), init(rng, "w2", [2, 4, 2, 3]), init(rng, "w3", [4, 2, 3, 3])],
    )
    save("dilated_conv", g, {"x": rng.standard_normal([2, 3, 9, 9]).astype(np.float32)})


def upsample():
    """Nearest Resize (a U-Net's or a feature pyramid's upsampling) by scales on an NHWC value
    after a Conv, and by sizes with asymmetric coordinates and floor rounding; an
    AveragePool with overlapping strided windows and pads after it."""
    rng = np.random.default_rng(16)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),  # [2,2,4,4]
        n("Resize", ["c", "", "scales"], ["up"], name="resize_scales", mode="nearest"),  # [2,2,8,8]
        n("Resize", ["x", "", "", "sizes"], ["up2"], name="resize_sizes", mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),  # [2,3,12,8]
        n("AveragePool", ["up"], ["ap"], name="avg_pool_strided", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),  # [2,2,4,4]
    ]
    g = helper.make_graph(
        nodes,
        "upsample",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [
            helper.make_tensor_value_info("up", TensorProto.FLOAT, [2, 2, 8, 8]),
            helper.make_tensor_value_info("up2", TensorProto.FLOAT, [2, 3, 12, 8]),
            helper.make_tensor_value_info("ap", TensorProto.FLOAT, [2, 2, 4, 4]),
        ],
        [init(rng, "w", [2, 3, 3, 3]), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"), ints("sizes", [2, 3, 12, 8])],
    )
    save("upsample", g, {"x": rng.standard_normal([2, 3, 4, 4]).astype(np.float32)})


def strided_slice():
    """Slice with steps (gathers in gradlift): every other row and a reversed stride of
    columns, a whole axis reversed (start -1, end INT64_MIN), and YOLO's space-to-depth
    (Focus) on a 4-D value: the four pixel phases concatenated on the channels."""
    rng = np.random.default_rng(17)
    n = helper.make_node
    big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    nodes = [
        n("Slice", ["x", "s1", "e1", "a1", "st1"], ["y1"], name="strided"),  # [2,3]
        n("Slice", ["x", "s2", "e2", "a2", "st2"], ["y2"], name="reversed"),  # [4,6]
        n("Slice", ["img", "f0", "fe", "fa", "fs"], ["p00"], name="focus00"),
        n("Slice", ["img", "f1", "fe", "fa", "fs"], ["p11"], name="focus11"),
        n("Slice", ["img", "f2", "fe", "fa", "fs"], ["p01"], name="focus01"),
        n("Slice", ["img", "f3", "fe", "fa", "fs"], ["p10"], name="focus10"),
        n("Concat", ["p00", "p10", "p01", "p11"], ["focus"], name="focus", axis=1),  # [2,12,3,3]
    ]
    g = helper.make_graph(
        nodes,
        "strided_slice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6]), helper.make_tensor_value_info("img", TensorProto.FLOAT, [2, 3, 6, 6])],
        [
            helper.make_tensor_value_info("y1", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, [4, 6]),
            helper.make_tensor_value_info("focus", TensorProto.FLOAT, [2, 12, 3, 3]),
        ],
        [
            ints("s1", [0, 5]), ints("e1", [4, -100]), ints("a1", [0, 1]), ints("st1", [2, -2]),
            ints("s2", [-1]), ints("e2", [small]), ints("a2", [1]), ints("st2", [-1]),
            ints("f0", [0, 0]), ints("f1", [1, 1]), ints("f2", [0, 1]), ints("f3", [1, 0]),
            ints("fe", [big, big]), ints("fa", [2, 3]), ints("fs", [2, 2]),
        ],
    )
    feeds = {"x": rng.standard_normal([4, 6]).astype(np.float32), "img": rng.standard_normal([2, 3, 6, 6]).astype(np.float32)}
    save("strided_slice", g, feeds)


if __name__ == "__main__":
    mlp()
    cnn()
    ops()
    spatial()
    opset18()
    opset11()
    pytorch_style()
    keras_style()
    opset20()
    batched_matmul()
    conv_transpose()
    logic()
    resnet_block()
    grouped_conv()
    dilated_conv()
    upsample()
    strided_slice()
