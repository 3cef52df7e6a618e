"""The study: the comparison of runs at equal budgets (`runner`, with its command line in
`__main__`), its report (`report`), the budgets (`budgets`), the analytic FLOP model (`flops`)
and the compiled train step's memory and time (`step_cost`)."""
