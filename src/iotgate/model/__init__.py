"""The thing model of iotgate: parsing, validation, diffing and Alibaba TSL / Huawei product-model I/O.

Public API::

    ModelError, ThingModel, parse_model, model_to_dict, empty_model,
    import_alibaba, export_alibaba, import_huawei, export_huawei, diff_models,
    ValidationIssue, CompiledModel, validate_properties

Serialise a model with :func:`model_to_dict` (not ``msgspec.json.encode(model)``: the structs use snake_case
attribute names and untagged spec variants). Vendor import errors name the path in the converted iotgate
document (e.g. ``modules[0].properties[2].dataType.specs.min``), where ``modules[i]`` is the i-th non-default
Huawei service / Alibaba function block and Huawei ``commands`` are ``services``.
"""

from .alibaba import export_alibaba, export_alibaba_module, import_alibaba
from .diff import diff_models
from .huawei import export_huawei, import_huawei
from .types import (
    DEFAULT_MODULE,
    ArraySpecs,
    BoolSpecs,
    DataType,
    DateSpecs,
    EnumSpecs,
    Event,
    ModelError,
    Module,
    NumberSpecs,
    Param,
    Property,
    Service,
    StructSpecs,
    TextSpecs,
    ThingModel,
    empty_model,
    model_to_dict,
    parse_model,
)
from .validate import CompiledModel, ValidationIssue, validate_properties

__all__ = [
    "DEFAULT_MODULE",
    "ArraySpecs",
    "BoolSpecs",
    "CompiledModel",
    "DataType",
    "DateSpecs",
    "EnumSpecs",
    "Event",
    "ModelError",
    "Module",
    "NumberSpecs",
    "Param",
    "Property",
    "Service",
    "StructSpecs",
    "TextSpecs",
    "ThingModel",
    "ValidationIssue",
    "diff_models",
    "empty_model",
    "export_alibaba",
    "export_alibaba_module",
    "export_huawei",
    "import_alibaba",
    "import_huawei",
    "model_to_dict",
    "parse_model",
    "validate_properties",
]
