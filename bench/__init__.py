"""
Speedy's benchmark harnesses (see README.md).  The scripts run as
C{python bench/NAME.py} and import their siblings by plain name; this file
only lets trial find their tests: C{trial bench._test_loadgen}.
"""
