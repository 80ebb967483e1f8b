"""What a run shows and writes: the header and summary table (:mod:`.terminal`), the end of the run
(:mod:`.summary`), the Markdown report and charts (:mod:`.files`), the benchmark JSON's ``extra_info``
(:mod:`.benchmark_info`) and ``quantreg compare`` (:mod:`.compare`)."""
