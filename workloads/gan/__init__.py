"""The study's DCGAN on FashionMNIST: config, models, data, loop and a domain-feature quality score."""
