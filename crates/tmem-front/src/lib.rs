//! Guest-side tmem library: frontend connection and the lazy-init pool map.
