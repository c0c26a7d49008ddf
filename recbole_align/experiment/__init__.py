"""The experiment harness in parts: methods (the one table of methods), plan, jobs (execution and
its cache), aggregate, tables (the report); :mod:`recbole_align.benchmark` is its command."""
