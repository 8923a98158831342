"""payment_fraud@1 workflow package."""
