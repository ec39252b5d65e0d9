"""Defaults shared by the quickstart, the zoo checks and the tests (one place, so they agree)."""

#: lookback window (days) the quickstart trains with and `zoo check` builds models for
LOOKBACK = 20
#: number of per-day features of the synthetic market (and what `zoo check` feeds its models)
N_FEATURES = 8
#: label horizon (days) of the synthetic market's default label `y5`
HORIZON = 5
#: default label column of the synthetic market
LABEL = "y5"
