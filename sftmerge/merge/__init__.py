"""The merge driver: recipe validation, the stock `mergekit-yaml` runner, the recipe registry."""
