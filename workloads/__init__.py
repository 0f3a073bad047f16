"""Plain PyTorch / NumPy workloads. Nothing here imports Ray or the orchestrator."""
