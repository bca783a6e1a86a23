"""Assets (vehicles, charge points) and their encrypted signer keys."""
