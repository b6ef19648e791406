"""HTTP adapters over the catalog logic."""
