"""pytest-benchmark suite of every op and kernel set against PyTorch, and its report.

    python -m bench          # run the whole suite, then write results/REPORT.md
"""
