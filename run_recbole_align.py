"""Train and evaluate a recbole-align or RecBole model, as RecBole's run_recbole.py does (the same as
the ``recbole-align`` command).

    python run_recbole_align.py --model=HSTU --dataset=ml-100k
    python run_recbole_align.py --model=SASRec --dataset=ml-100k --epochs=5
"""

from recbole_align.quick_start import main

if __name__ == "__main__":
    main()
