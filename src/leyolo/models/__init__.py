"""Model families and the contract they meet (``base``); ``registry`` names them."""
