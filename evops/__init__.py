"""evops: the asset operator's console for the Energy Web EV prequalification flow."""
