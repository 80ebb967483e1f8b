"""The fallback search: the units a precision can keep in FP32 (:mod:`.units`), their effect probed and
ranked (:mod:`.probe`, :mod:`.sensitivity`), the smallest set that passes (:mod:`.search`) and its report
(:mod:`.result`)."""
