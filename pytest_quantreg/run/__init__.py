"""One pytest session's quantreg run: :mod:`.session` (:class:`~.session.QuantregRun`) composes what is
measured (:mod:`.subject`), the models built (:mod:`.builds`), what was found (:mod:`.ledger`) and the
baseline file (:mod:`.baseline_store`)."""
