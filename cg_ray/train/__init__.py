"""Training: the driver that checks inputs and fits a Ray Train TorchTrainer (`driver`), the loop
every DDP worker runs (`worker`), checkpoint files (`checkpoint`) and the optimizer (`optim`)."""
