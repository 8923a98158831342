"""payment_fraud@2 workflow package."""
