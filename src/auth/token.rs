//! Signed tokens (JSON Web Tokens): verifying and minting.
