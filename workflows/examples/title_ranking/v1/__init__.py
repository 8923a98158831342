"""title_ranking@1 workflow package."""
