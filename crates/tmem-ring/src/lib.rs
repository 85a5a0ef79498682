//! Both ends of the tmem shared ring over a shared-memory trait.
