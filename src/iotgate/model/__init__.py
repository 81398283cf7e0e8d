"""The thing model of iotgate: parsing, validation, diffing and Alibaba TSL / Huawei product-model I/O.

Public API::

    ModelError, ThingModel, parse_model, model_to_dict, empty_model,
    import_alibaba, export_alibaba, import_huawei, export_huawei, diff_models,
    ValidationIssue, CompiledModel, validate_properties
"""

from .alibaba import export_alibaba, import_alibaba
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
    "export_huawei",
    "import_alibaba",
    "import_huawei",
    "model_to_dict",
    "parse_model",
    "validate_properties",
]
