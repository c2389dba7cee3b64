-- The retention loop (SPEC section 6): the holdout group, and the offer a withdrawal was made for.
ALTER TABLE cancellations ADD COLUMN holdout boolean NOT NULL DEFAULT false;
ALTER TABLE cancellations ADD COLUMN taken_offer text;
