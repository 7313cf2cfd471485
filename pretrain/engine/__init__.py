"""The training engine shared by pretraining and the classification transfer."""
