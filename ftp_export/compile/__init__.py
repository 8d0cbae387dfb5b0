"""torch.compile / AOTInductor target."""
