"""Research questions about AutoDistil, each a script run from the repository root as a module
(``python -m experiments.<name> ...``); raw results in experiments/results/YYYY-MM-DD_<topic>/,
reports in docs/reports/. Not part of the installed package: nothing in autodistil/ imports them.
See experiments/README.md."""
