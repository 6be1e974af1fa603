"""A search run, in one-job modules (docs/design.md §7), bottom-up:

- `errors`: RunError;
- `trial_log`: the `trials.jsonl` codec, reading it back, and the Pareto archive from its lines;
- `directory`: `RunDirectory`, the run's files (config, log, checkpoint, state, lock);
- `rungs`: `SuccessiveHalving`, which candidates earn a fuller evaluation;
- `loop`: `SchedulingLoop`, which keeps the workers busy and finishes trials;
- `report`: what a run holds, read from its directory alone;
- `search_run`: `SearchRun`, which creates or resumes a run and drives the loop.

Import from the modules; this package imports none of them, so that lower layers (export
reads a run through `directory`) never pull in the loop above them.
"""
