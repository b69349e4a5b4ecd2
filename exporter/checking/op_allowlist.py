"""The ops a SavedModel may hold: known pure computation, and a few effects with a reason each.

This is an allowlist. ``unsafe_ops.scan`` refuses a SavedModel if any op in any graph or
function is missing here, so an op TensorFlow adds in a later release is refused until
someone reads what it does and adds it with a reason (docs/checking.md: "Keeping the list").

``PURE``: ops of TensorFlow 2.21's array (``gen_array_ops``, ``gen_manip_ops``), math
(``gen_math_ops``, ``gen_bitwise_ops``, ``gen_special_math_ops``, ``gen_linalg_ops``,
``gen_spectral_ops``), nn, image, stateless-random, string (and ``StringToNumber``),
tensor-list and control-flow (``gen_control_flow_ops``, ``gen_functional_ops``) op
libraries that its registry does not mark stateful, less those that reach outside the
process or carry a program: ``ImmutableConst`` (maps a file into memory), ``Abort`` (kills
the process), ``RemoteCall`` (runs a function on another device or host), ``For``,
``FakeParam``, ``DeviceIndex`` and ``SymbolicGradient`` (no model of ours or of the anchors
uses them). They take tensors and give tensors; what they cost in time and memory is what
the checker's bounded run (``exporter.checking.isolated``) is for.

``EFFECTS``: ops with an effect that a model needs, each admitted for the reason given.

Checkpoint I/O (``SaveV2``, ``RestoreV2``, ...) is on neither list: ``unsafe_ops`` admits
it only where a saver reads or writes the checkpoint path its caller feeds in.
"""

from __future__ import annotations

# fmt: off
PURE: dict[str, frozenset[str]] = {
    "array": frozenset(
        {
            "BatchMatrixBandPart", "BatchMatrixDiag", "BatchMatrixDiagPart", "BatchMatrixSetDiag",
            "BatchToSpace", "BatchToSpaceND", "Bitcast", "BroadcastArgs", "BroadcastGradientArgs",
            "BroadcastTo", "Concat", "ConcatOffset", "ConcatV2", "ConjugateTranspose", "Const",
            "DebugGradientIdentity", "DebugGradientRefIdentity", "DepthToSpace", "Dequantize",
            "Diag", "DiagPart", "DynamicStitch", "EditDistance", "EnsureShape", "ExpandDims",
            "ExtractImagePatches", "ExtractVolumePatches", "FakeQuantWithMinMaxArgs",
            "FakeQuantWithMinMaxArgsGradient", "FakeQuantWithMinMaxVars",
            "FakeQuantWithMinMaxVarsGradient", "FakeQuantWithMinMaxVarsPerChannel",
            "FakeQuantWithMinMaxVarsPerChannelGradient", "Fill", "Fingerprint", "Gather",
            "GatherNd", "GatherV2", "Identity", "IdentityN", "InplaceAdd", "InplaceSub",
            "InplaceUpdate", "InvertPermutation", "ListDiff", "LowerBound", "MatrixBandPart",
            "MatrixDiag", "MatrixDiagPart", "MatrixDiagPartV2", "MatrixDiagPartV3", "MatrixDiagV2",
            "MatrixDiagV3", "MatrixSetDiag", "MatrixSetDiagV2", "MatrixSetDiagV3", "MirrorPad",
            "MirrorPadGrad", "OneHot", "OnesLike", "Pack", "Pad", "PadV2", "ParallelConcat",
            "ParallelDynamicStitch", "Placeholder", "PlaceholderV2", "PlaceholderWithDefault",
            "PreventGradient", "QuantizeAndDequantize", "QuantizeAndDequantizeV2",
            "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4", "QuantizeAndDequantizeV4Grad",
            "QuantizeV2", "QuantizedConcat", "QuantizedInstanceNorm", "QuantizedReshape", "Rank",
            "RefIdentity", "Reshape", "Reverse", "ReverseSequence", "ReverseV2", "Roll",
            "ScatterNd", "ScatterNdNonAliasingAdd", "Shape", "ShapeN", "Size", "Slice", "Snapshot",
            "SpaceToBatch", "SpaceToBatchND", "SpaceToDepth", "Split", "SplitV", "Squeeze",
            "StopGradient", "StridedSlice", "StridedSliceAssign", "StridedSliceGrad",
            "TensorScatterAdd", "TensorScatterMax", "TensorScatterMin", "TensorScatterSub",
            "TensorScatterUpdate", "TensorStridedSliceUpdate", "Tile", "TileGrad", "Transpose",
            "Unique", "UniqueV2", "UniqueWithCounts", "UniqueWithCountsV2", "Unpack",
            "UnravelIndex", "UpperBound", "Where", "ZerosLike"
        }
    ),
    "math": frozenset(
        {
            "Abs", "AccumulateNV2", "Acos", "Acosh", "Add", "AddN", "AddV2", "All", "Angle", "Any",
            "ApproximateEqual", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atan2", "Atanh",
            "BandedTriangularSolve", "BatchCholesky", "BatchCholeskyGrad", "BatchFFT",
            "BatchFFT2D", "BatchFFT3D", "BatchIFFT", "BatchIFFT2D", "BatchIFFT3D", "BatchMatMul",
            "BatchMatMulV2", "BatchMatMulV3", "BatchMatrixDeterminant", "BatchMatrixInverse",
            "BatchMatrixSolve", "BatchMatrixSolveLs", "BatchMatrixTriangularSolve",
            "BatchSelfAdjointEig", "BatchSelfAdjointEigV2", "BatchSvd", "BesselI0", "BesselI0e",
            "BesselI1", "BesselI1e", "BesselJ0", "BesselJ1", "BesselK0", "BesselK0e", "BesselK1",
            "BesselK1e", "BesselY0", "BesselY1", "Betainc", "Bincount", "BitwiseAnd", "BitwiseOr",
            "BitwiseXor", "Bucketize", "Cast", "Ceil", "Cholesky", "CholeskyGrad", "ClipByValue",
            "Complex", "ComplexAbs", "Conj", "Cos", "Cosh", "Cross", "Cumprod", "Cumsum",
            "CumulativeLogsumexp", "Dawsn", "DenseBincount", "Digamma", "Div", "DivNoNan", "Eig",
            "Einsum", "Equal", "Erf", "Erfc", "Erfinv", "EuclideanNorm", "Exp", "Expint", "Expm1",
            "FFT", "FFT2D", "FFT3D", "FFTND", "Floor", "FloorDiv", "FloorMod", "FresnelCos",
            "FresnelSin", "Greater", "GreaterEqual", "HistogramFixedWidth", "IFFT", "IFFT2D",
            "IFFT3D", "IFFTND", "IRFFT", "IRFFT2D", "IRFFT3D", "IRFFTND", "Igamma", "IgammaGradA",
            "Igammac", "Imag", "Inv", "InvGrad", "Invert", "IsFinite", "IsInf", "IsNan",
            "LeftShift", "Less", "LessEqual", "Lgamma", "LinSpace", "Log", "Log1p",
            "LogMatrixDeterminant", "LogicalAnd", "LogicalNot", "LogicalOr", "Lu", "MatMul",
            "MatrixDeterminant", "MatrixExponential", "MatrixInverse", "MatrixLogarithm",
            "MatrixSolve", "MatrixSolveLs", "MatrixSquareRoot", "MatrixTriangularSolve", "Max",
            "Maximum", "Mean", "Min", "Minimum", "Mod", "Mul", "MulNoNan", "Ndtri", "Neg",
            "NextAfter", "NotEqual", "Polygamma", "PopulationCount", "Pow", "Prod", "Qr",
            "QuantizeDownAndShrinkRange", "QuantizedAdd", "QuantizedMatMul", "QuantizedMul",
            "RFFT", "RFFT2D", "RFFT3D", "RFFTND", "RaggedBincount", "Range", "Real", "RealDiv",
            "Reciprocal", "ReciprocalGrad", "RequantizationRange", "RequantizationRangePerChannel",
            "Requantize", "RequantizePerChannel", "RightShift", "Rint", "Round", "Rsqrt",
            "RsqrtGrad", "SegmentMax", "SegmentMaxV2", "SegmentMean", "SegmentMin", "SegmentMinV2",
            "SegmentProd", "SegmentProdV2", "SegmentSum", "SegmentSumV2", "Select", "SelectV2",
            "SelfAdjointEig", "SelfAdjointEigV2", "Sigmoid", "SigmoidGrad", "Sign", "Sin", "Sinh",
            "SobolSample", "SparseBincount", "SparseMatMul", "SparseSegmentMean",
            "SparseSegmentMeanGrad", "SparseSegmentMeanGradV2", "SparseSegmentMeanWithNumSegments",
            "SparseSegmentSqrtN", "SparseSegmentSqrtNGrad", "SparseSegmentSqrtNGradV2",
            "SparseSegmentSqrtNWithNumSegments", "SparseSegmentSum", "SparseSegmentSumGrad",
            "SparseSegmentSumGradV2", "SparseSegmentSumWithNumSegments", "Spence", "Sqrt",
            "SqrtGrad", "Square", "SquaredDifference", "Sub", "Sum", "Svd", "Tan", "Tanh",
            "TanhGrad", "TridiagonalMatMul", "TridiagonalSolve", "TruncateDiv", "TruncateMod",
            "UnsortedSegmentMax", "UnsortedSegmentMin", "UnsortedSegmentProd",
            "UnsortedSegmentSum", "Xdivy", "Xlog1py", "Xlogy", "Zeta"
        }
    ),
    "nn": frozenset(
        {
            "ApproxTopK", "AvgPool", "AvgPool3D", "AvgPool3DGrad", "AvgPoolGrad",
            "BatchNormWithGlobalNormalization", "BatchNormWithGlobalNormalizationGrad", "BiasAdd",
            "BiasAddGrad", "BiasAddV1", "Conv", "Conv2D", "Conv2DBackpropFilter",
            "Conv2DBackpropFilterV2", "Conv2DBackpropInput", "Conv2DBackpropInputV2", "Conv3D",
            "Conv3DBackpropFilter", "Conv3DBackpropFilterV2", "Conv3DBackpropInput",
            "Conv3DBackpropInputV2", "DataFormatDimMap", "DataFormatVecPermute",
            "DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropFilter",
            "DepthwiseConv2dNativeBackpropInput", "Dilation2D", "Dilation2DBackpropFilter",
            "Dilation2DBackpropInput", "Elu", "EluGrad", "FractionalAvgPool",
            "FractionalAvgPoolGrad", "FractionalMaxPool", "FractionalMaxPoolGrad",
            "FusedBatchNorm", "FusedBatchNormGrad", "FusedBatchNormGradV2", "FusedBatchNormGradV3",
            "FusedBatchNormV2", "FusedBatchNormV3", "FusedPadConv2D", "FusedResizeAndPadConv2D",
            "InTopK", "InTopKV2", "IsotonicRegression", "L2Loss", "LRN", "LRNGrad", "LeakyRelu",
            "LeakyReluGrad", "LogSoftmax", "MaxPool", "MaxPool3D", "MaxPool3DGrad",
            "MaxPool3DGradGrad", "MaxPoolGrad", "MaxPoolGradGrad", "MaxPoolGradGradV2",
            "MaxPoolGradGradWithArgmax", "MaxPoolGradV2", "MaxPoolGradWithArgmax", "MaxPoolV2",
            "MaxPoolWithArgmax", "NthElement", "QuantizedAvgPool",
            "QuantizedBatchNormWithGlobalNormalization", "QuantizedBiasAdd", "QuantizedConv2D",
            "QuantizedConv2DAndRelu", "QuantizedConv2DAndReluAndRequantize",
            "QuantizedConv2DAndRequantize", "QuantizedConv2DPerChannel", "QuantizedConv2DWithBias",
            "QuantizedConv2DWithBiasAndRelu", "QuantizedConv2DWithBiasAndReluAndRequantize",
            "QuantizedConv2DWithBiasAndRequantize",
            "QuantizedConv2DWithBiasSignedSumAndReluAndRequantize",
            "QuantizedConv2DWithBiasSumAndRelu", "QuantizedConv2DWithBiasSumAndReluAndRequantize",
            "QuantizedDepthwiseConv2D", "QuantizedDepthwiseConv2DWithBias",
            "QuantizedDepthwiseConv2DWithBiasAndRelu",
            "QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize", "QuantizedMatMulWithBias",
            "QuantizedMatMulWithBiasAndDequantize", "QuantizedMatMulWithBiasAndRelu",
            "QuantizedMatMulWithBiasAndReluAndRequantize", "QuantizedMatMulWithBiasAndRequantize",
            "QuantizedMaxPool", "QuantizedRelu", "QuantizedRelu6", "QuantizedReluX", "Relu",
            "Relu6", "Relu6Grad", "ReluGrad", "Selu", "SeluGrad", "Softmax",
            "SoftmaxCrossEntropyWithLogits", "Softplus", "SoftplusGrad", "Softsign",
            "SoftsignGrad", "SparseSoftmaxCrossEntropyWithLogits", "TopK", "TopKV2"
        }
    ),
    "image": frozenset(
        {
            "AdjustContrast", "AdjustContrastv2", "AdjustHue", "AdjustSaturation",
            "CombinedNonMaxSuppression", "CropAndResize", "CropAndResizeGradBoxes",
            "CropAndResizeGradImage", "DecodeAndCropJpeg", "DecodeBmp", "DecodeGif", "DecodeImage",
            "DecodeJpeg", "DecodeJxl", "DecodePng", "DecodeWebP", "DrawBoundingBoxes",
            "DrawBoundingBoxesV2", "EncodeJpeg", "EncodeJpegVariableQuality", "EncodePng",
            "ExtractGlimpse", "ExtractGlimpseV2", "ExtractJpegShape",
            "GenerateBoundingBoxProposals", "HSVToRGB", "ImageProjectiveTransformV2",
            "ImageProjectiveTransformV3", "NonMaxSuppression", "NonMaxSuppressionV2",
            "NonMaxSuppressionV3", "NonMaxSuppressionV4", "NonMaxSuppressionV5",
            "NonMaxSuppressionWithOverlaps", "QuantizedResizeBilinear", "RGBToHSV", "ResizeArea",
            "ResizeBicubic", "ResizeBicubicGrad", "ResizeBilinear", "ResizeBilinearGrad",
            "ResizeNearestNeighbor", "ResizeNearestNeighborGrad", "ScaleAndTranslate",
            "ScaleAndTranslateGrad", "StatelessSampleDistortedBoundingBox"
        }
    ),
    "random": frozenset(
        {
            "RandomIndexShuffle", "StatelessMultinomial", "StatelessParameterizedTruncatedNormal",
            "StatelessRandomBinomial", "StatelessRandomGammaV2", "StatelessRandomGammaV3",
            "StatelessRandomGetKeyCounter", "StatelessRandomGetKeyCounterAlg",
            "StatelessRandomNormal", "StatelessRandomNormalV2", "StatelessRandomPoisson",
            "StatelessRandomUniform", "StatelessRandomUniformFullInt",
            "StatelessRandomUniformFullIntV2", "StatelessRandomUniformInt",
            "StatelessRandomUniformIntV2", "StatelessRandomUniformV2", "StatelessShuffle",
            "StatelessTruncatedNormal", "StatelessTruncatedNormalV2"
        }
    ),
    "string": frozenset(
        {
            "StringToNumber",  # gen_parsing_ops: parses numbers out of strings.
            "AsString", "DecodeBase64", "EncodeBase64", "ReduceJoin", "RegexFullMatch",
            "RegexReplace", "StaticRegexFullMatch", "StaticRegexReplace", "StringFormat",
            "StringJoin", "StringLength", "StringLower", "StringNGrams", "StringSplit",
            "StringSplitV2", "StringStrip", "StringToHashBucket", "StringToHashBucketFast",
            "StringToHashBucketStrong", "StringUpper", "Substr", "UnicodeDecode",
            "UnicodeDecodeWithOffsets", "UnicodeEncode", "UnicodeScript", "UnicodeTranscode",
            "UnsortedSegmentJoin"
        }
    ),
    "tensor_list": frozenset(
        {
            "EmptyTensorList", "TensorListConcat", "TensorListConcatLists", "TensorListConcatV2",
            "TensorListElementShape", "TensorListFromTensor", "TensorListGather",
            "TensorListGetItem", "TensorListLength", "TensorListPopBack", "TensorListPushBack",
            "TensorListPushBackBatch", "TensorListReserve", "TensorListResize",
            "TensorListScatter", "TensorListScatterIntoExistingList", "TensorListScatterV2",
            "TensorListSetItem", "TensorListSplit", "TensorListStack"
        }
    ),
    "control_flow": frozenset(
        {
            "ControlTrigger", "Enter", "Exit", "LoopCond", "Merge", "NextIteration", "NoOp",
            "PartitionedCall", "RefEnter", "RefExit", "RefMerge", "RefNextIteration", "RefSelect",
            "RefSwitch", "StatelessCase", "StatelessIf", "StatelessWhile", "Switch", "ToBool"
        }
    ),
}
# fmt: on

_READS = "reads a variable whose handle is passed in (the model's own, restored from variables/)"
_WRITES = "assigns to a variable whose handle is passed in (batch-norm statistics, fine-tuning)"
_CALLS = "calls a function of the SavedModel's own library, which is scanned as well"
_DRAWS = "draws from the process's random generator (dropout, random augmentation)"
_TF1 = "a TF1 reference variable of the model, or an assignment to one"

EFFECTS: dict[str, str] = {
    "Assert": "raises an error when its condition is false; nothing else",
    "CheckNumerics": "raises an error on NaN or infinity; nothing else",
    "CheckNumericsV2": "raises an error on NaN or infinity; nothing else",
    "StatefulPartitionedCall": _CALLS,
    "If": _CALLS,
    "While": _CALLS,
    "Case": _CALLS,
    "VarHandleOp": "creates the handle of one of the model's own variables (eager: a fresh name)",
    "ReadVariableOp": _READS,
    "VariableShape": _READS,
    "VarIsInitializedOp": _READS,
    "ResourceGather": _READS,
    "ResourceGatherNd": _READS,
    "DisableCopyOnRead": "marks a passed-in variable as not copied on read (TF 2.13+ savers)",
    "AssignVariableOp": _WRITES,
    "AssignAddVariableOp": _WRITES,
    "AssignSubVariableOp": _WRITES,
    "ResourceStridedSliceAssign": _WRITES,
    "ResourceScatterAdd": _WRITES,
    "ResourceScatterSub": _WRITES,
    "ResourceScatterMul": _WRITES,
    "ResourceScatterDiv": _WRITES,
    "ResourceScatterMin": _WRITES,
    "ResourceScatterMax": _WRITES,
    "ResourceScatterUpdate": _WRITES,
    "ResourceScatterNdAdd": _WRITES,
    "ResourceScatterNdSub": _WRITES,
    "ResourceScatterNdUpdate": _WRITES,
    "VariableV2": _TF1,
    "Assign": _TF1,
    "AssignAdd": _TF1,
    "AssignSub": _TF1,
    "RandomUniform": _DRAWS,
    "RandomUniformInt": _DRAWS,
    "RandomStandardNormal": _DRAWS,
    "TruncatedNormal": _DRAWS,
    "RandomShuffle": _DRAWS,
    "RandomGamma": _DRAWS,
    "RandomPoisson": _DRAWS,
    "RandomPoissonV2": _DRAWS,
    "Multinomial": _DRAWS,
    "ParameterizedTruncatedNormal": _DRAWS,
    "RandomCrop": _DRAWS,
    "SampleDistortedBoundingBox": _DRAWS,
    "SampleDistortedBoundingBoxV2": _DRAWS,
    "RngReadAndSkip": "advances a random generator's state, a variable passed in",
    "StatelessRandomGetAlg": "reports which random algorithm this device uses",
    "Empty": "allocates a tensor without filling it",
    "DeepCopy": "copies a tensor",
    "GuaranteeConst": "marks a tensor as constant for the optimizer",
    "ShardedFilename": "formats a checkpoint shard's file name (a string); opens nothing",
    "ShardedFilespec": "formats a checkpoint's file pattern (a string); opens nothing",
}

ALLOWED: frozenset[str] = frozenset(EFFECTS).union(*PURE.values())


def reason(op: str) -> str | None:
    """Why ``op`` is admitted (its family, or its effect's reason); None if it is not.

    Example:
        >>> reason("Conv2D")
        'pure computation (nn)'
        >>> reason("WriteFile") is None
        True
    """
    if op in EFFECTS:
        return EFFECTS[op]
    family = next((name for name, ops in PURE.items() if op in ops), None)
    return None if family is None else f"pure computation ({family})"
