"""The precisions: :mod:`.base` (what a precision is), :mod:`.registry` (names, aliases, the built-ins)
and one module per quantization backend (:mod:`.casts`, :mod:`.torch_dynamic`, :mod:`.bnb`,
:mod:`.torchao`, :mod:`.ort`, :mod:`.openvino`, and :mod:`.compiled` for ``NAME+compile``)."""
