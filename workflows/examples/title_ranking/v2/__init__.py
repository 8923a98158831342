"""title_ranking@2 workflow package."""
