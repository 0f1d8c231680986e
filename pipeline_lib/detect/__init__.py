"""Detection: the decision rule, the streaming detector, model runtimes, metrics, the model zoo."""
