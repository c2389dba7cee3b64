-- The retention loop (SPEC section 6): the offer a withdrawal took, told in the offer confirmation.
ALTER TABLE requests ADD COLUMN taken_offer text;
