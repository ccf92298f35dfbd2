"""erpsync: change-data-capture processor between ecommerce channels and ERP/WMS systems."""

__version__ = "0.1.0"
