from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_NONE: _ClassVar[Method]
    CAM: _ClassVar[Method]
    GRADCAM: _ClassVar[Method]
    GRADCAMPP: _ClassVar[Method]
    XGRADCAM: _ClassVar[Method]
    LAYERCAM: _ClassVar[Method]
    HIRESCAM: _ClassVar[Method]
    ABLATIONCAM: _ClassVar[Method]
    SCORECAM: _ClassVar[Method]
    GRADCAM_COUNTERFACTUAL: _ClassVar[Method]
    EIGENCAM: _ClassVar[Method]
    RECIPROCAM: _ClassVar[Method]
    SALIENCY: _ClassVar[Method]
    DECONVNET: _ClassVar[Method]
    GUIDED_BACKPROP: _ClassVar[Method]
    GUIDED_GRADCAM: _ClassVar[Method]
    SMOOTHGRAD: _ClassVar[Method]
    SMOOTHGRAD_GUIDED: _ClassVar[Method]
    SMOOTH_GRADCAMPP: _ClassVar[Method]
    INTEGRATED_GRADIENTS: _ClassVar[Method]
    OCCLUSION: _ClassVar[Method]
METHOD_UNSPECIFIED: Method
METHOD_NONE: Method
CAM: Method
GRADCAM: Method
GRADCAMPP: Method
XGRADCAM: Method
LAYERCAM: Method
HIRESCAM: Method
ABLATIONCAM: Method
SCORECAM: Method
GRADCAM_COUNTERFACTUAL: Method
EIGENCAM: Method
RECIPROCAM: Method
SALIENCY: Method
DECONVNET: Method
GUIDED_BACKPROP: Method
GUIDED_GRADCAM: Method
SMOOTHGRAD: Method
SMOOTHGRAD_GUIDED: Method
SMOOTH_GRADCAMPP: Method
INTEGRATED_GRADIENTS: Method
OCCLUSION: Method

class Sampling(_message.Message):
    __slots__ = ("samples", "noise_level", "seed", "steps", "baseline", "patch", "stride", "fill")
    class Baseline(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        BLACK: _ClassVar[Sampling.Baseline]
        ZERO: _ClassVar[Sampling.Baseline]
    BLACK: Sampling.Baseline
    ZERO: Sampling.Baseline
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NOISE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    samples: int
    noise_level: float
    seed: int
    steps: int
    baseline: Sampling.Baseline
    patch: int
    stride: int
    fill: float
    def __init__(self, samples: _Optional[int] = ..., noise_level: _Optional[float] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., baseline: _Optional[_Union[Sampling.Baseline, str]] = ..., patch: _Optional[int] = ..., stride: _Optional[int] = ..., fill: _Optional[float] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[_Iterable[float]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "image", "tensor", "methods", "targets", "top_k", "budget_ms", "raw", "heatmap_png", "overlay_png", "request_id", "sampling", "max_render_side")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_RENDER_SIDE_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    tensor: Tensor
    methods: _containers.RepeatedScalarFieldContainer[Method]
    targets: _containers.RepeatedScalarFieldContainer[int]
    top_k: int
    budget_ms: float
    raw: bool
    heatmap_png: bool
    overlay_png: bool
    request_id: str
    sampling: Sampling
    max_render_side: int
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ..., targets: _Optional[_Iterable[int]] = ..., top_k: _Optional[int] = ..., budget_ms: _Optional[float] = ..., raw: _Optional[bool] = ..., heatmap_png: _Optional[bool] = ..., overlay_png: _Optional[bool] = ..., request_id: _Optional[str] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., max_render_side: _Optional[int] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("index", "label", "score", "logit")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    score: float
    logit: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., logit: _Optional[float] = ...) -> None: ...

class RawMap(_message.Message):
    __slots__ = ("height", "width", "values", "channels")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    values: _containers.RepeatedScalarFieldContainer[float]
    channels: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ..., channels: _Optional[int] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("method", "target", "target_label", "raw", "heatmap_png", "overlay_png", "completeness_gap", "score_difference")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_LABEL_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_GAP_FIELD_NUMBER: _ClassVar[int]
    SCORE_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    method: Method
    target: int
    target_label: str
    raw: RawMap
    heatmap_png: bytes
    overlay_png: bytes
    completeness_gap: float
    score_difference: float
    def __init__(self, method: _Optional[_Union[Method, str]] = ..., target: _Optional[int] = ..., target_label: _Optional[str] = ..., raw: _Optional[_Union[RawMap, _Mapping]] = ..., heatmap_png: _Optional[bytes] = ..., overlay_png: _Optional[bytes] = ..., completeness_gap: _Optional[float] = ..., score_difference: _Optional[float] = ...) -> None: ...

class Skipped(_message.Message):
    __slots__ = ("method", "reason", "detail")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[Skipped.Reason]
        BUDGET: _ClassVar[Skipped.Reason]
        NOT_SUPPORTED: _ClassVar[Skipped.Reason]
        NOT_AVAILABLE: _ClassVar[Skipped.Reason]
    REASON_UNSPECIFIED: Skipped.Reason
    BUDGET: Skipped.Reason
    NOT_SUPPORTED: Skipped.Reason
    NOT_AVAILABLE: Skipped.Reason
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    method: Method
    reason: Skipped.Reason
    detail: str
    def __init__(self, method: _Optional[_Union[Method, str]] = ..., reason: _Optional[_Union[Skipped.Reason, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("decode_ms", "preprocess_ms", "queue_ms", "inference_ms", "postprocess_ms", "total_ms", "batch_rows")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    postprocess_ms: float
    total_ms: float
    batch_rows: int
    def __init__(self, decode_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., postprocess_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_rows: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "predictions", "heatmaps", "skipped", "timing", "request_id", "image_height", "image_width", "error", "sampling")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    model: str
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    heatmaps: _containers.RepeatedCompositeFieldContainer[Heatmap]
    skipped: _containers.RepeatedCompositeFieldContainer[Skipped]
    timing: Timing
    request_id: str
    image_height: int
    image_width: int
    error: Error
    sampling: Sampling
    def __init__(self, model: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., heatmaps: _Optional[_Iterable[_Union[Heatmap, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[Skipped, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., request_id: _Optional[str] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "num_classes", "input_height", "input_width", "methods")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_classes: int
    input_height: int
    input_width: int
    methods: _containers.RepeatedScalarFieldContainer[Method]
    def __init__(self, name: _Optional[str] = ..., num_classes: _Optional[int] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class Preprocess(_message.Message):
    __slots__ = ("color", "layout", "resize_shorter_side", "crop_height", "crop_width", "scale", "mean", "std")
    COLOR_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    RESIZE_SHORTER_SIDE_FIELD_NUMBER: _ClassVar[int]
    CROP_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CROP_WIDTH_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    color: str
    layout: str
    resize_shorter_side: int
    crop_height: int
    crop_width: int
    scale: float
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, color: _Optional[str] = ..., layout: _Optional[str] = ..., resize_shorter_side: _Optional[int] = ..., crop_height: _Optional[int] = ..., crop_width: _Optional[int] = ..., scale: _Optional[float] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class OutputError(_message.Message):
    __slots__ = ("max_abs", "max_rel")
    MAX_ABS_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_FIELD_NUMBER: _ClassVar[int]
    max_abs: float
    max_rel: float
    def __init__(self, max_abs: _Optional[float] = ..., max_rel: _Optional[float] = ...) -> None: ...

class ExportCheck(_message.Message):
    __slots__ = ("passed", "tolerance_rel", "outputs")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: OutputError
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[OutputError, _Mapping]] = ...) -> None: ...
    PASSED_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_REL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    tolerance_rel: float
    outputs: _containers.MessageMap[str, OutputError]
    def __init__(self, passed: _Optional[bool] = ..., tolerance_rel: _Optional[float] = ..., outputs: _Optional[_Mapping[str, OutputError]] = ...) -> None: ...

class ModelMetadata(_message.Message):
    __slots__ = ("name", "labels", "num_classes", "input_height", "input_width", "target_layer", "activation_shape", "methods", "preprocess", "export_check", "opset", "source", "method_cost_ms", "providers", "unavailable")
    class SourceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MethodCostMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_CHECK_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    METHOD_COST_MS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    num_classes: int
    input_height: int
    input_width: int
    target_layer: str
    activation_shape: _containers.RepeatedScalarFieldContainer[int]
    methods: _containers.RepeatedScalarFieldContainer[Method]
    preprocess: Preprocess
    export_check: ExportCheck
    opset: int
    source: _containers.ScalarMap[str, str]
    method_cost_ms: _containers.ScalarMap[str, float]
    providers: _containers.RepeatedScalarFieldContainer[str]
    unavailable: _containers.RepeatedCompositeFieldContainer[Skipped]
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., num_classes: _Optional[int] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., target_layer: _Optional[str] = ..., activation_shape: _Optional[_Iterable[int]] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ..., preprocess: _Optional[_Union[Preprocess, _Mapping]] = ..., export_check: _Optional[_Union[ExportCheck, _Mapping]] = ..., opset: _Optional[int] = ..., source: _Optional[_Mapping[str, str]] = ..., method_cost_ms: _Optional[_Mapping[str, float]] = ..., providers: _Optional[_Iterable[str]] = ..., unavailable: _Optional[_Iterable[_Union[Skipped, _Mapping]]] = ...) -> None: ...

class VisualizeClassRequest(_message.Message):
    __slots__ = ("model", "target", "steps", "learning_rate", "l2", "jitter", "blur_sigma", "blur_every", "seed", "report_every")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    BLUR_SIGMA_FIELD_NUMBER: _ClassVar[int]
    BLUR_EVERY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REPORT_EVERY_FIELD_NUMBER: _ClassVar[int]
    model: str
    target: int
    steps: int
    learning_rate: float
    l2: float
    jitter: int
    blur_sigma: float
    blur_every: int
    seed: int
    report_every: int
    def __init__(self, model: _Optional[str] = ..., target: _Optional[int] = ..., steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., l2: _Optional[float] = ..., jitter: _Optional[int] = ..., blur_sigma: _Optional[float] = ..., blur_every: _Optional[int] = ..., seed: _Optional[int] = ..., report_every: _Optional[int] = ...) -> None: ...

class VisualizeClassUpdate(_message.Message):
    __slots__ = ("step", "steps", "score", "objective", "probability", "image_png", "top1", "top1_label")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PNG_FIELD_NUMBER: _ClassVar[int]
    TOP1_FIELD_NUMBER: _ClassVar[int]
    TOP1_LABEL_FIELD_NUMBER: _ClassVar[int]
    step: int
    steps: int
    score: float
    objective: float
    probability: float
    image_png: bytes
    top1: int
    top1_label: str
    def __init__(self, step: _Optional[int] = ..., steps: _Optional[int] = ..., score: _Optional[float] = ..., objective: _Optional[float] = ..., probability: _Optional[float] = ..., image_png: _Optional[bytes] = ..., top1: _Optional[int] = ..., top1_label: _Optional[str] = ...) -> None: ...
